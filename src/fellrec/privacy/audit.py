"""Privacy audit of the flexible storage strategy: can an honest-but-curious server read the client's prompts back
from the hidden states h_k it receives?

The server holds the public base model (so its input-embedding table) and sees h_k, the output of the embeddings and
the client's first k decoder blocks, for every token of every prompt. Two attacks, each scored on the tokens of the
item titles inside the victim client's real prompts (the private part; the template around them is public):

- nearest neighbour: each h_k row is decoded as the vocabulary token whose input-embedding row is nearest by cosine
  similarity. At k = 0 h_0 is the embedding row itself, so this recovers every token exactly.
- learned inverters, trained with cross-entropy on h_k of *public* text only (titles the victim never contributed,
  rendered in the same public prompt template), then applied to the victim's h_k: a linear map and a one-hidden-layer
  MLP (GELU) from h_k to a point in the input-embedding space, decoded by cosine against the embedding table (logits
  over the whole vocabulary). Both start as the identity, i.e. as the nearest-neighbour attack.

Rates: token recovery = the fraction of victim title tokens decoded exactly; title recovery = the fraction of victim
title occurrences whose every token is decoded exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fellrec.config import DataArgs, ModelArgs, PartitionArgs
from fellrec.data.prompts import PromptStyle
from fellrec.data.table import RecData, natural_key
from fellrec.errors import FellrecError
from fellrec.evaluation.generation import left_pad
from fellrec.model.blocks import layer_types, position_ids_from_mask, run_blocks
from fellrec.reporting.stamp import dataset_name

DEFAULT_HEAD_LAYERS = (0, 1, 2, 4, 8)
ATTACKS = ("nn", "linear", "mlp")
MLP_HIDDEN = 256
NEGATIVES = 2048  # extra vocabulary rows in each inverter training softmax (see train_inverter)
_BATCH_ROWS = 1024  # rows decoded against the whole vocabulary at once (1024 x 49152 floats = 200 MB)


# ----- text: prompts with the character spans of the titles inside them -----

@dataclass
class Prompt:
    """A rendered prompt and the [start, end) character span of every title in it (quotes excluded)."""

    text: str
    spans: list[tuple[int, int]]


def render_with_spans(titles: Sequence[str], style: PromptStyle) -> Prompt:
    """The prompt the client sends for this history, with where each title sits in it (found inside its own piece of
    the template, so a title containing quotes, commas or another title is placed right)."""
    prefix, pieces, suffix = style.parts(list(titles))
    spans, cursor = [], len(prefix)
    for title, piece in zip(map(style.shown, titles), pieces):
        start = cursor + piece.index(title)
        spans.append((start, start + len(title)))
        cursor += len(piece)
    return Prompt(prefix + "".join(pieces) + suffix, spans)


def victim_prompts(data: RecData, client_users: Sequence[str], style: PromptStyle, max_titles: int,
                   seed: int) -> list[Prompt]:
    """The victim client's real prompts, one per user (its test prompt, else validation, else training), in a seeded
    order, until `max_titles` title occurrences are reached (the last history keeps its most recent titles)."""
    users = set(client_users)
    first: dict[str, tuple[str, ...]] = {}
    for sample in data.test + data.valid + data.train:
        if sample.user in users and sample.history and sample.user not in first:
            first[sample.user] = sample.history
    order = sorted(first, key=natural_key)
    random.Random(seed).shuffle(order)
    prompts, left = [], max_titles
    for user in order:
        if left <= 0:
            break
        history = first[user][-left:]
        prompts.append(render_with_spans([data.titles[i] for i in history], style))
        left -= len(history)
    if not prompts:
        raise FellrecError("the victim client has no prompt with a history to audit")
    return prompts


def items_of(data: RecData, client_users: Sequence[str]) -> set[str]:
    """Every item any of these users interacted with, in any split: what the client may ever put in a prompt."""
    users = set(client_users)
    items = {item for user, item in data.train_pairs if user in users}
    for sample in data.train + data.valid + data.test:
        if sample.user in users:
            items.update(sample.history)
            items.update(sample.targets)
    return items


@dataclass
class PublicText:
    """The attacker's training text: titles the victim never contributed, and a sentence saying where they are from."""

    titles: list[str]
    description: str


def public_titles(data: RecData, data_args: DataArgs, victim_items: set[str], max_titles: int,
                  seed: int) -> PublicText:
    """Titles the server may know without the victim: another dataset's catalogue where one is installed offline,
    else the victim dataset's own titles of items no user of the victim client ever interacted with.

    Only MovieLens-100K ships offline (in the recbole wheel), so for a MovieLens victim the second kind is used.
    """
    victim_titles = {data.titles[i] for i in victim_items if i in data.titles}
    if data_args.source == "movielens100k":
        pool = sorted(data.titles[i] for i in data.titles if i not in victim_items)
        pool = [t for t in pool if t not in victim_titles]  # two items may share a title
        where = ("MovieLens-100K titles of items that no user of the victim client ever interacted with (no second "
                 "title dataset is installed offline: the recbole wheel ships only ml-100k)")
    else:
        from fellrec.data.sources import read_movielens100k

        pool = sorted(set(read_movielens100k(DataArgs()).titles.values()) - victim_titles)
        where = "MovieLens-100K movie titles (from the recbole wheel), a dataset other than the victim's"
    if not pool:
        raise FellrecError("no public titles left: every title of the catalogue is in the victim client's data")
    picked = random.Random(seed).sample(pool, min(max_titles, len(pool)))
    return PublicText(picked, where)


def chunk_prompts(titles: Sequence[str], per_prompt: int, style: PromptStyle) -> list[Prompt]:
    """Public titles laid out as prompts of the same template (the attacker knows it), `per_prompt` titles each."""
    return [render_with_spans(titles[i:i + per_prompt], style) for i in range(0, len(titles), per_prompt)]


# ----- hidden states at depth k -----

@dataclass
class TitleTokens:
    """The title tokens of a list of prompts: their ids, which title each belongs to, and h_k of each per k."""

    ids: torch.Tensor
    title_of: torch.Tensor
    hidden: dict[int, torch.Tensor]
    num_titles: int
    """Titles numbered (title_of indexes them); one cut whole by the length limit has no token and is not scored."""

    @property
    def scored_titles(self) -> int:
        return int(torch.unique(self.title_of).numel())


def _encode(prompt: Prompt, tokenizer, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids as training encodes a prompt (no special tokens, start cut when too long), and for each token the
    index of the title it overlaps (-1 for template tokens). A title cut by the length limit is dropped whole."""
    enc = tokenizer(prompt.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][-max_length:], enc["offset_mapping"][-max_length:]
    cut = len(enc["input_ids"]) - len(ids)
    owner = [-1] * len(ids)
    for t, (start, end) in enumerate(prompt.spans):
        tokens = [j for j, (a, b) in enumerate(offsets) if a < end and b > start]
        if tokens and not (cut and tokens[0] == 0):  # the first kept token may be the tail of a cut title
            for j in tokens:
                owner[j] = t
    return ids, owner


@torch.no_grad()
def head_states(causal_lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """h_k for each k: the embeddings, then blocks 0..k-1 run one at a time as the client's head runs them.

    `run_blocks` rebuilds each block's own mask kind (Qwen2's sliding-window layers included) and rotary embeddings
    from the 2D mask and the position ids, exactly as ClientModule.head does; the blocks may be dense or nf4.
    """
    body, config = causal_lm.model, causal_lm.config
    kinds = layer_types(config, config.num_hidden_layers)
    device = causal_lm.get_input_embeddings().weight.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = position_ids_from_mask(attention_mask)
    h = body.embed_tokens(input_ids)
    states = {0: h} if 0 in ks else {}
    for i in range(max(ks)):
        h = run_blocks(body.layers[i:i + 1], kinds[i:i + 1], body.rotary_emb, config, h, attention_mask, position_ids)
        if i + 1 in ks:
            states[i + 1] = h
    return states


def title_token_states(causal_lm: nn.Module, tokenizer, prompts: Sequence[Prompt], ks: Sequence[int],
                       max_length: int = 512, batch_size: int = 8) -> TitleTokens:
    """h_k of every title token of `prompts`, rows aligned with their token ids; padding and template tokens are
    left out (the template is public, so recovering it says nothing about the client)."""
    ids, title_of, hidden = [], [], {k: [] for k in ks}
    offset = 0  # titles are numbered across all prompts
    for b in range(0, len(prompts), batch_size):
        batch = prompts[b:b + batch_size]
        encoded = [_encode(p, tokenizer, max_length) for p in batch]
        input_ids, mask = left_pad([e[0] for e in encoded], tokenizer.pad_token_id)
        states = head_states(causal_lm, input_ids, mask, ks)
        width = input_ids.shape[1]
        for row, ((row_ids, owner), prompt) in enumerate(zip(encoded, batch)):
            keep = [j for j, t in enumerate(owner) if t >= 0]
            cols = torch.tensor([width - len(row_ids) + j for j in keep], dtype=torch.long)
            ids.append(input_ids[row, cols])
            title_of.append(torch.tensor([offset + owner[j] for j in keep], dtype=torch.long))
            for k in ks:
                hidden[k].append(states[k][row, cols.to(states[k].device)].float().cpu())
            offset += len(prompt.spans)
    return TitleTokens(torch.cat(ids), torch.cat(title_of), {k: torch.cat(v) for k, v in hidden.items()}, offset)


# ----- attacks -----

def nearest_neighbour(hidden: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """For each row of `hidden`, the vocabulary id whose input-embedding row has the highest cosine similarity."""
    table = F.normalize(embeddings.float(), dim=-1)
    return torch.cat([(F.normalize(chunk, dim=-1) @ table.T).argmax(-1)
                      for chunk in hidden.float().split(_BATCH_ROWS)])


class Inverter(nn.Module):
    """h_k -> a point in the input-embedding space, decoded by cosine against the whole embedding table.

    `hidden=None` gives the linear inverter; otherwise a GELU hidden layer of that width is added beside the linear
    path. The linear path starts as the identity and the MLP's output layer at zero, so before training both equal
    the nearest-neighbour attack: what training adds is what the public text teaches. The input is divided by its
    RMS, which leaves the cosine decoding unchanged and keeps deep layers' large activations from swamping the MLP.
    """

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim))
            self.linear.bias.zero_()
        self.mlp = None
        if hidden:
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))  # inverse temperature of the cosine logits

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        z = self.linear(h) if self.mlp is None else self.linear(h) + self.mlp(h)
        return F.normalize(z, dim=-1)

    def logits(self, h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Scaled cosine logits against `table` (unit rows of the embedding table, or a subset of them)."""
        return self(h) @ table.T * self.log_scale.exp()


def _candidates(targets: torch.Tensor, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """Training softmax rows: every token of the public text plus NEGATIVES seeded random others.

    A softmax over all 49152 rows costs ~2 s per 3000 states on a 2-core CPU; this sampled one (~2.5k rows) is ~20x
    cheaper and still teaches the inverter to push off tokens the public text never shows (4096 negatives instead
    gave the same recovery on SmolLM2). Decoding always scores the full vocabulary.
    """
    others = torch.randperm(vocab_size, generator=generator)[:NEGATIVES]
    return torch.unique(torch.cat([targets, others]))


def train_inverter(hidden: torch.Tensor, targets: torch.Tensor, embeddings: torch.Tensor, mlp_hidden: int | None,
                   epochs: int, seed: int, lr: float = 3e-3, batch_size: int = 256) -> Inverter:
    """Fit an Inverter on (h_k, token id) pairs of public text with cross-entropy and AdamW, seeded, on the CPU.

    lr 3e-3 beat 1e-3 and 1e-2 on SmolLM2 at k = 2 and 8 (ML-100K, 10 epochs); the attack should not be weak by
    choice of optimiser."""
    generator = torch.Generator().manual_seed(seed)
    table = F.normalize(embeddings.float(), dim=-1)
    candidates = _candidates(targets, table.shape[0], generator)
    index_of = torch.full((table.shape[0],), -1, dtype=torch.long)
    index_of[candidates] = torch.arange(len(candidates))
    sub_table, sub_targets = table[candidates], index_of[targets]
    with torch.random.fork_rng(devices=[]):  # the MLP's initial weights: seeded, the caller's RNG left alone
        torch.manual_seed(seed)
        model = Inverter(hidden.shape[1], mlp_hidden)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)  # decay would pull off the identity
    for _ in range(epochs):
        for rows in torch.randperm(len(targets), generator=generator).split(batch_size):
            loss = F.cross_entropy(model.logits(hidden[rows], sub_table), sub_targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def decode(model: Inverter, hidden: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """The inverter's most likely vocabulary id for each row (over the whole vocabulary)."""
    table = F.normalize(embeddings.float(), dim=-1)
    return torch.cat([model.logits(chunk, table).argmax(-1) for chunk in hidden.split(_BATCH_ROWS)])


def recovery(predicted: torch.Tensor, ids: torch.Tensor, title_of: torch.Tensor, num_titles: int) -> dict:
    """Token recovery (exact ids) and title recovery (every token of a title exact) of one attack."""
    hit = predicted.cpu() == ids.cpu()
    wrong = torch.zeros(num_titles, dtype=torch.long).index_add_(0, title_of, (~hit).long())
    has_tokens = torch.zeros(num_titles, dtype=torch.long).index_add_(0, title_of, torch.ones_like(title_of))
    titles = has_tokens > 0
    return {"token_recovery": hit.float().mean().item() if len(hit) else float("nan"),
            "title_recovery": (wrong[titles] == 0).float().mean().item() if titles.any() else float("nan")}


def with_boundary_noise(tokens: TitleTokens, k: int, noise: float, seed: int) -> TitleTokens:
    """`tokens` with h_k as the server receives it under `split.boundary_noise` = `noise` (seeded draws)."""
    from fellrec.model.split import add_boundary_noise

    generator = torch.Generator().manual_seed(seed)
    return TitleTokens(tokens.ids, tokens.title_of, {k: add_boundary_noise(tokens.hidden[k], noise, generator)},
                       tokens.num_titles)


def attack_depth(k: int, victim: TitleTokens, public: TitleTokens, embeddings: torch.Tensor, epochs: int,
                 seed: int, noise: float = 0.0) -> dict:
    """All three attacks at depth k: one row of the audit table. With `noise`, the server sees noised h_k of the
    victim, and the attacker trains on noised h_k of its public text (it knows the defence, not the draws)."""
    if noise:
        victim = with_boundary_noise(victim, k, noise, seed + 1)
        public = with_boundary_noise(public, k, noise, seed + 2)
    predictions = {"nn": nearest_neighbour(victim.hidden[k], embeddings)}
    for name, width in (("linear", None), ("mlp", MLP_HIDDEN)):
        inverter = train_inverter(public.hidden[k], public.ids, embeddings, width, epochs, seed + k)
        predictions[name] = decode(inverter, victim.hidden[k], embeddings)
    row = {"k": k, "noise": noise}
    for name in ATTACKS:
        rates = recovery(predictions[name], victim.ids, victim.title_of, victim.num_titles)
        row[f"{name}_token_recovery"], row[f"{name}_title_recovery"] = rates["token_recovery"], rates["title_recovery"]
    return row


# ----- the whole audit -----

def check_head_layers(ks: Sequence[int], n_layers: int) -> list[int]:
    """The depths to audit, sorted and unique; each must leave the server at least one block."""
    if not ks:
        raise FellrecError("--head-layers needs at least one depth k")
    bad = [k for k in ks if not 0 <= k < n_layers]
    if bad:
        raise FellrecError(f"--head-layers {' '.join(map(str, bad))}: k must be in 0..{n_layers - 1}, since this "
                           f"model has {n_layers} decoder layers and k >= {n_layers} would leave the server no block "
                           "(and nothing to receive)")
    return sorted(set(int(k) for k in ks))


def run_audit(data_args: DataArgs, partition_args: PartitionArgs, model_args: ModelArgs, ks: Sequence[int],
              victim_client: int = 0, max_titles: int = 300, epochs: int = 10, seed: int = 42,
              progress: Callable = lambda it, **kw: it, noise_levels: Sequence[float] = (0.0,)) -> dict:
    """Load the base model (no adapters) and the data, build victim and public text, attack at every k and every
    boundary-noise level (`split.boundary_noise`).

    The base model is loaded dense: in a split at k the client runs its k head blocks dense (only the server's range
    is nf4), so h_k is what the server receives. Returns {"rows": [...], and what the report needs to say}.
    """
    from fellrec.data.partition import partition_users
    from fellrec.data.pipeline import load_data
    from fellrec.model.loading import load_base_model, load_tokenizer

    if max_titles < 1 or epochs < 0:
        raise FellrecError(f"--max_titles must be >= 1 and --epochs >= 0 (got {max_titles}, {epochs})")
    if not noise_levels or any(not (math.isfinite(n) and n >= 0) for n in noise_levels):
        raise FellrecError(f"--boundary-noise levels must be numbers >= 0, got {list(noise_levels)}")
    causal_lm, tokenizer = load_base_model(model_args), load_tokenizer(model_args)
    ks = check_head_layers(ks, causal_lm.config.num_hidden_layers)
    data = load_data(data_args)
    partition = partition_users(data, partition_args)
    if not 0 <= victim_client < partition.num_clients:
        raise FellrecError(f"--victim_client must be in 0..{partition.num_clients - 1}, got {victim_client}")
    users = partition.users_of(victim_client)
    style = PromptStyle.from_args(data_args)
    victim_text = victim_prompts(data, users, style, max_titles, seed)
    public = public_titles(data, data_args, items_of(data, users), max_titles, seed)
    public_text = chunk_prompts(public.titles, data_args.max_history, style)
    victim = title_token_states(causal_lm, tokenizer, victim_text, ks, model_args.max_length)
    attacker = title_token_states(causal_lm, tokenizer, public_text, ks, model_args.max_length)
    embeddings = causal_lm.get_input_embeddings().weight.detach().float().cpu()
    grid = [(noise, k) for noise in noise_levels for k in ks]
    rows = [attack_depth(k, victim, attacker, embeddings, epochs, seed, noise)
            for noise, k in progress(grid, desc="audit", unit="attack")]
    return {"rows": rows, "num_layers": causal_lm.config.num_hidden_layers, "victim_client": victim_client,
            "victim_prompts": len(victim_text), "victim_titles": victim.scored_titles,
            "victim_tokens": int(len(victim.ids)), "public_text": public.description,
            "public_titles": attacker.scored_titles, "public_tokens": int(len(attacker.ids)),
            "epochs": epochs, "mlp_hidden": MLP_HIDDEN, "seed": seed, "max_titles": max_titles,
            "dataset": dataset_name(data_args), "model": model_args.path or model_args.name}
