"""The split LLM: a client half (embeddings, first k and last m blocks, norm, LM head) and a frozen server half
(the middle blocks, nf4 by default, each client's LoRA on top), joined only by a BoundaryLink.

`SplitModel` holds the one base model in memory; `SplitModel.sides(client)` gives that client's ClientModule,
ServerModule and link as views over the shared blocks, so clients with different (k, m) share all weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from fellrec.config import ModelArgs, SplitArgs
from fellrec.errors import FellrecError
from fellrec.model.blocks import IGNORE_INDEX, causal_lm_loss, layer_types, position_ids_from_mask, run_blocks
from fellrec.model.int8 import int8_blocks
from fellrec.model.link import BoundaryLink
from fellrec.model.loading import load_base_model, torch_dtype
from fellrec.model.lora import adapter_parameters, attach_lora
from fellrec.model.quantize import disable_cpu_repack, quantize_blocks


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class ClientModule(L.LightningModule):
    """The client's half: token ids, labels, logits and the loss live only here."""

    def __init__(self, embed_tokens: nn.Module, head_blocks: list, tail_blocks: list, norm: nn.Module,
                 lm_head: nn.Module, rotary_emb: nn.Module, model_config, kinds: tuple[list, list],
                 link: BoundaryLink, lr: float = 1e-4, boundary_noise: float = 0.0):
        super().__init__()
        self.embed_tokens, self.norm, self.lm_head, self.rotary_emb = embed_tokens, norm, lm_head, rotary_emb
        self.head_blocks, self.tail_blocks = nn.ModuleList(head_blocks), nn.ModuleList(tail_blocks)
        self.model_config, (self.head_kinds, self.tail_kinds) = model_config, kinds
        self.link, self.lr = link, lr  # the link is a plain object: the server's parameters stay out of this module
        self.boundary_noise = boundary_noise

    def head(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
             cache=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and the first k blocks: h_k and the position ids (which skip left padding). With a KV `cache`
        (generation), `attention_mask` also covers the cached tokens and `input_ids` holds only the new ones."""
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)[:, -input_ids.shape[1]:]
        h = self.embed_tokens(input_ids)
        return run_blocks(self.head_blocks, self.head_kinds, self.rotary_emb, self.model_config, h, attention_mask,
                          position_ids, cache), position_ids

    def tail_hidden(self, h: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                    cache=None) -> torch.Tensor:
        """The last m blocks and the final norm: the states the LM head reads."""
        h = run_blocks(self.tail_blocks, self.tail_kinds, self.rotary_emb, self.model_config, h, attention_mask,
                       position_ids, cache)
        return self.norm(h)

    def tail(self, h: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The last m blocks, the final norm and the LM head: logits."""
        return self.lm_head(self.tail_hidden(h, attention_mask, position_ids))

    def hidden(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
               position_ids: Optional[torch.Tensor] = None, cache=None) -> torch.Tensor:
        """Final-norm hidden states of the whole split model; the middle runs on the server through the link.

        `cache` (generation) holds the client's blocks' keys and values; the server keeps its own (ServerModule.cache).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h, position_ids = self.head(input_ids, attention_mask, position_ids, cache)
        h = self.link(add_boundary_noise(h, self.boundary_noise), attention_mask, position_ids)
        return self.tail_hidden(h, attention_mask, position_ids, cache)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits of the whole split model at every position."""
        return self.lm_head(self.hidden(input_ids, attention_mask))

    def loss(self, batch: dict) -> torch.Tensor:
        """Causal-LM loss of a batch {input_ids, attention_mask, labels} (labels -100 are ignored).

        The LM head runs only where a label is read: a BIGRec sample labels only its response tokens, and the head
        (hidden x 49,152 for SmolLM2) over every position, copied to fp32, made the step 1.55-1.72x slower
        (experiments/bench_lm_head.py)."""
        hidden = self.hidden(batch["input_ids"], batch.get("attention_mask"))[:, :-1]
        targets = batch["labels"][:, 1:].to(hidden.device)
        read = targets != IGNORE_INDEX
        logits = self.lm_head(hidden[read]).float()
        return F.cross_entropy(logits, targets[read])

    def training_step(self, batch: dict, batch_idx: int = 0) -> torch.Tensor:
        # backward() on this loss also runs the server's backward through the link (its adapters get grads);
        # step the ServerModule's optimizer next to this one.
        return self.loss(batch)

    def validation_step(self, batch: dict, batch_idx: int = 0) -> torch.Tensor:
        return self.loss(batch)

    def configure_optimizers(self):
        return torch.optim.AdamW(_trainable(self), lr=self.lr)


def add_boundary_noise(h: torch.Tensor, relative_std: float, generator: Optional[torch.Generator] = None
                       ) -> torch.Tensor:
    """h plus Gaussian noise whose std is `relative_std` times each token's RMS over the hidden dimension (the
    boundary defence: the server receives only the noised h_k). 0 returns h itself and draws nothing."""
    if relative_std == 0:
        return h
    rms = h.detach().float().pow(2).mean(-1, keepdim=True).sqrt()
    noise = torch.randn(h.shape, generator=generator, device=h.device, dtype=torch.float32)
    return h + (noise * rms * relative_std).to(h.dtype)


class ServerModule(L.LightningModule):
    """The server's half: the frozen middle blocks and the current client's LoRA on them.

    It only ever sees hidden states, the 2D attention mask, position ids and gradients (see BoundaryLink).
    `cache`, set only while a generation runs through the split (fellrec.model.split_decoding), is the server's own
    KV cache of its blocks.
    """

    def __init__(self, blocks: list, rotary_emb: nn.Module, model_config, kinds: list, lr: float = 1e-4):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rotary_emb = copy.deepcopy(rotary_emb)  # its own copy: the server shares no module with the client
        self.model_config, self.kinds, self.lr = model_config, kinds, lr
        self.cache = None

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.blocks, self.kinds, self.rotary_emb, self.model_config, h, attention_mask,
                          position_ids, self.cache)

    def configure_optimizers(self):
        return torch.optim.AdamW(_trainable(self), lr=self.lr)


@dataclass
class SplitSides:
    """One client's view of the split model: its ClientModule, the ServerModule serving it, and their link."""

    client: ClientModule
    server: ServerModule
    link: BoundaryLink
    k: int
    m: int

    def train(self, mode: bool = True) -> "SplitSides":
        self.client.train(mode)
        self.server.train(mode)
        return self

    def eval(self) -> "SplitSides":
        return self.train(False)


def resolve_split(split: SplitArgs, client: Optional[int], n_layers: int) -> tuple[int, int]:
    """(k, m) for `client` (the per-client override, else the default), checked against the model depth."""
    k, m = split.head_layers, split.tail_layers
    if client is not None:
        override = split.per_client.get(client, split.per_client.get(str(client)))
        if override is not None:
            k, m = override
    where = f"client {client}" if client is not None and split.per_client else "split"
    if k < 0 or m < 0:
        raise FellrecError(f"{where}: head_layers and tail_layers must be >= 0 (got k={k}, m={m})")
    if k + m >= n_layers:
        raise FellrecError(f"{where}: head_layers + tail_layers = {k} + {m} leaves no block for the server; "
                           f"it must be < {n_layers}, the number of decoder layers of this model")
    return int(k), int(m)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class SplitModel:
    """One base model (peft-wrapped, LoRA on every block) with the server range frozen in nf4, split per client.

    Quantised range: the blocks any client leaves on the server, [min k, n - min m). A client with a larger k or m
    than the smallest runs the extra blocks from that same nf4 storage on its side (one base model in memory).
    """

    def __init__(self, model_args: ModelArgs, split_args: Optional[SplitArgs] = None,
                 device: Optional[torch.device | str] = None, lr: float = 1e-4):
        self.model_args, self.split_args = model_args, split_args or SplitArgs()
        self.device, self.lr = torch.device(device) if device is not None else default_device(), lr
        base = load_base_model(model_args).to(self.device)
        self.config = base.config
        self.n_layers = self.config.num_hidden_layers
        self.kinds = layer_types(self.config, self.n_layers)
        self.quantized_range = self._quantized_range()
        if model_args.quantize == "nf4":
            lo, hi = self.quantized_range
            quantize_blocks(base.model.layers[lo:hi], torch_dtype(model_args.compute_dtype), self.device)
            base.is_loaded_in_4bit = True  # lets peft put its 4-bit LoRA layer on the Linear4bit modules
        self.peft = attach_lora(base, model_args)
        if model_args.quantize == "int8":  # after peft: LoRA wraps the dense Linear, then its base turns int8
            lo, hi = self.quantized_range
            int8_blocks(self.causal_lm.model.layers[lo:hi])
        disable_cpu_repack(self.peft)
        self.peft.eval()
        self._sides: dict[tuple[int, int], SplitSides] = {}
        self.score_head: Optional[nn.Module] = None

    def rank_in_int8(self) -> None:
        """Swap dense server blocks to int8 for ranking (`eval.quantize: int8`): after training, so every step trained
        in full precision while ranking runs at the int8 kernel's rate. Blocks already int8 stay as they are, and so
        do blocks on a GPU, where the kernel is missing and int8 would only dequantize."""
        if self.model_args.quantize == "nf4":
            raise FellrecError("eval.quantize int8 needs dense server blocks (got model.quantize nf4)")
        if self.model_args.quantize == "none" and self.device.type == "cpu":
            lo, hi = self.quantized_range
            int8_blocks(self.causal_lm.model.layers[lo:hi])
            self.model_args = replace(self.model_args, quantize="int8")

    def _quantized_range(self) -> tuple[int, int]:
        clients = [None, *self.split_args.per_client]
        splits = [resolve_split(self.split_args, c, self.n_layers) for c in clients]
        return min(k for k, _ in splits), self.n_layers - min(m for _, m in splits)

    @property
    def causal_lm(self) -> nn.Module:
        """The underlying transformers model (with peft's LoRA layers injected)."""
        return self.peft.base_model.model

    def split_of(self, client: Optional[int] = None) -> tuple[int, int]:
        return resolve_split(self.split_args, client, self.n_layers)

    def sides(self, client: Optional[int] = None) -> SplitSides:
        """The client/server halves for `client`'s (k, m): views over the shared blocks, built once per split."""
        k, m = self.split_of(client)
        if (k, m) not in self._sides:
            self._sides[(k, m)] = self._build_sides(k, m)
        return self._sides[(k, m)]

    def _build_sides(self, k: int, m: int) -> SplitSides:
        lm = self.causal_lm
        layers, n = lm.model.layers, self.n_layers
        server = ServerModule(list(layers[k:n - m]), lm.model.rotary_emb, self.config, self.kinds[k:n - m], self.lr)
        link = BoundaryLink(server)
        client = ClientModule(lm.model.embed_tokens, list(layers[:k]), list(layers[n - m:]), lm.model.norm,
                              lm.lm_head, lm.model.rotary_emb, self.config, (self.kinds[:k], self.kinds[n - m:]),
                              link, self.lr, self.split_args.boundary_noise)
        return SplitSides(client, server, link, k, m)

    def full_logits(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The unsplit model's logits (the same weights run as one Hugging Face model, no link)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.peft(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids_from_mask(attention_mask)).logits

    def full_loss(self, batch: dict) -> torch.Tensor:
        return causal_lm_loss(self.full_logits(batch["input_ids"], batch.get("attention_mask")), batch["labels"])

    def attach_score_head(self, head: nn.Module) -> nn.Module:
        """Give the model the scoring objective's head (client-side state, trained and aggregated with the adapters);
        attach it before the AdapterStore is built."""
        self.score_head = head.to(self.device)
        return self.score_head

    def adapter_parameters(self):
        """Every live trainable tensor by flat name: the LoRA parameters (peft saved-format names), then the score
        head's when there is one."""
        params = adapter_parameters(self.peft)
        if self.score_head is not None:
            params.update(self.score_head.named_state())
        return params
