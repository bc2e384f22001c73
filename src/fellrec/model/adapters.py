"""Per-client LoRA adapters over one base model: stored apart by side, swapped in by copying tensors.

A client's adapter is an ordered dict flat name -> tensor (peft's saved-format names, e.g.
`base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`), the same names for every client whatever its
split, so strategies can aggregate tensor by tensor. The store keeps each client's tensors in two parts: the
client-side part (held by the client) and the server-side part (held by the server, never sent to the client).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Optional

import torch

from fellrec.errors import FellrecError
from fellrec.model.lora import on_client
from fellrec.model.score_head import PREFIX as SCORE_HEAD_PREFIX
from fellrec.model.split import SplitModel

State = "OrderedDict[str, torch.Tensor]"
WEIGHTS_FILE, CONFIG_FILE = "adapter_model.safetensors", "adapter_config.json"
SCORE_HEAD_FILE = "score_head.safetensors"  # beside an exported peft directory, which holds LoRA tensors only
CLIENT_PART, SERVER_PART = "client_side", "server_side"


def save_adapter(state: Mapping[str, torch.Tensor], directory: str | Path, peft_config) -> Path:
    """Write `state` as a peft adapter directory (adapter_model.safetensors + adapter_config.json)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({n: t.detach().cpu().contiguous() for n, t in state.items()}, str(directory / WEIGHTS_FILE),
              metadata={"format": "pt"})
    peft_config.save_pretrained(str(directory))
    return directory


def load_adapter(directory: str | Path) -> State:
    """The tensors of a peft adapter directory, by their saved names."""
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FellrecError(f"no {WEIGHTS_FILE} in the adapter directory", path=directory)
    return OrderedDict(load_file(str(path)))


class AdapterStore:
    """N clients' adapters for one SplitModel; `activate(c)` copies client c's tensors into the live LoRA layers."""

    def __init__(self, model: SplitModel):
        self.model = model
        self.live = model.adapter_parameters()  # flat name -> live nn.Parameter, fixed for the model's life
        # Every client starts from the same LoRA initialisation (B = 0), as in federated LoRA fine-tuning.
        self.initial = self._snapshot(self.live)
        self._client_parts: dict[int, State] = {}
        self._server_parts: dict[int, State] = {}
        self.active: Optional[int] = None

    @staticmethod
    def _snapshot(tensors: Mapping[str, torch.Tensor]) -> State:
        return OrderedDict((n, t.detach().to("cpu", copy=True)) for n, t in tensors.items())

    def _is_client_side(self, client: int, name: str) -> bool:
        k, m = self.model.split_of(client)
        return on_client(name, k, m, self.model.n_layers)

    def _ensure(self, client: int) -> None:
        if client not in self._client_parts:
            self._store(client, self.initial)

    def _store(self, client: int, state: Mapping[str, torch.Tensor]) -> None:
        self._check(state)
        cpart, spart = OrderedDict(), OrderedDict()
        for name in self.live:  # live order, so every client's dict has the same order
            (cpart if self._is_client_side(client, name) else spart)[name] = state[name].detach().to("cpu",
                                                                                               copy=True)
        self._client_parts[client], self._server_parts[client] = cpart, spart

    def _check(self, state: Mapping[str, torch.Tensor]) -> None:
        missing, extra = set(self.live) - set(state), set(state) - set(self.live)
        if missing or extra:
            raise FellrecError(f"adapter state does not fit this model: {len(missing)} tensors missing "
                               f"(e.g. {sorted(missing)[:1]}), {len(extra)} unknown (e.g. {sorted(extra)[:1]})")
        for name, param in self.live.items():
            if tuple(state[name].shape) != tuple(param.shape):
                raise FellrecError(f"adapter tensor {name} has shape {tuple(state[name].shape)}, "
                                   f"the model expects {tuple(param.shape)}")

    @property
    def clients(self) -> list[int]:
        return sorted(self._client_parts)

    def client_state(self, client: int) -> State:
        """The part of `client`'s adapter that the client holds (its head and tail blocks)."""
        self._ensure(client)
        return self._client_parts[client]

    def server_state(self, client: int) -> State:
        """The part of `client`'s adapter that the server holds (the middle blocks)."""
        self._ensure(client)
        return self._server_parts[client]

    def state(self, client: int) -> State:
        """`client`'s whole trainable adapter, flat name -> tensor in model order (what strategies aggregate)."""
        parts = {**self.client_state(client), **self.server_state(client)}
        return OrderedDict((n, parts[n]) for n in self.live)

    def set_state(self, client: int, state: Mapping[str, torch.Tensor]) -> None:
        """Replace `client`'s adapter (e.g. by an aggregate); the live model changes only on `activate`."""
        self._store(client, state)
        if self.active == client:
            self._copy_in(client)

    @torch.no_grad()
    def _copy_in(self, client: int) -> None:
        for part in (self._client_parts[client], self._server_parts[client]):
            for name, tensor in part.items():
                self.live[name].copy_(tensor)

    def activate(self, client: int):
        """Make `client`'s adapter live (copies into the LoRA parameters; time ~ adapter size); returns its sides."""
        self._ensure(client)
        self._copy_in(client)
        self.active = client
        return self.model.sides(client)

    def capture(self, client: Optional[int] = None) -> None:
        """Store the live LoRA tensors as `client`'s adapter (after it trained); default: the active client."""
        client = self.active if client is None else client
        if client is None:
            raise FellrecError("no client is active: activate one before capturing its adapter")
        self._store(client, self.live)

    def save(self, client: int, directory: str | Path) -> Path:
        """Write `client`'s adapter as two peft adapter directories, client_side/ and server_side/."""
        directory = Path(directory)
        save_adapter(self.client_state(client), directory / CLIENT_PART, self.model.peft.peft_config["default"])
        save_adapter(self.server_state(client), directory / SERVER_PART, self.model.peft.peft_config["default"])
        (directory / "split.json").write_text(json.dumps(dict(zip(("k", "m"), self.model.split_of(client)))))
        return directory

    def load(self, client: int, directory: str | Path) -> None:
        """Read `client`'s adapter written by `save` (or by `export`: one merged peft directory)."""
        directory = Path(directory)
        if (directory / CLIENT_PART).is_dir():
            state = {**load_adapter(directory / CLIENT_PART), **load_adapter(directory / SERVER_PART)}
        else:
            state = load_adapter(directory)
            if (directory / SCORE_HEAD_FILE).is_file():
                from safetensors.torch import load_file

                state.update(load_file(str(directory / SCORE_HEAD_FILE)))
        self.set_state(client, state)

    def export(self, client: int, directory: str | Path) -> Path:
        """`client`'s whole adapter as one peft directory, loadable by `PeftModel.from_pretrained(base, dir)`; the
        scoring objective's head (not a peft tensor) goes beside it, to score_head.safetensors."""
        from safetensors.torch import save_file

        state = self.state(client)
        lora = OrderedDict((n, t) for n, t in state.items() if not n.startswith(SCORE_HEAD_PREFIX))
        directory = save_adapter(lora, directory, self.model.peft.peft_config["default"])
        head = {n: t.contiguous() for n, t in state.items() if n.startswith(SCORE_HEAD_PREFIX)}
        if head:
            save_file(head, str(directory / SCORE_HEAD_FILE))
        return directory
