"""BIGRec grounding (METHOD.md §6): generated text -> base-model embedding -> nearest real items.

generate_titles  the client's model writes a title (re-exported from `generation`)
embed_texts      base model (adapters off), last layer, last real token; a SplitModel's through its split
ItemIndex        every item title's embedding, built once per (model, item set) and cached on disk
ground           rank items by L2 distance (optionally popularity-aware), history masked, top K
choose_pop_gamma the popularity exponent that is best on validation users
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from fellrec.data.table import Sample, natural_key
from fellrec.errors import FellrecError
from fellrec.evaluation.generation import (TitleTrie, decoder, eval_mode, generate_titles, language_model, left_pad,
                                           model_device, parse_title)
from fellrec.evaluation.metrics import mean_metrics

__all__ = ["GROUNDINGS", "POP_GAMMAS", "ItemIndex", "TitleTrie", "choose_pop_gamma", "embed_texts",
           "generate_titles", "ground", "index_key", "parse_title", "rank_scores", "title_trie"]

GROUNDINGS = ("l2", "constrained")
POP_GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
_INDEX_VERSION = "1"  # bump when the embedding recipe changes, so old cache files are never reused


def _base_model_context(lm):
    """Adapters off (peft), or nothing to switch off (a plain Hugging Face model)."""
    return lm.disable_adapter() if hasattr(lm, "disable_adapter") else contextlib.nullcontext()


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 32, progress=None,
                client: Optional[int] = None) -> torch.Tensor:
    """N x hidden float32: the base model's last-layer state at each text's last token (plain text, no quotes).

    Rows are left-padded, so the last real token is column -1 of every row; position ids skip the padding, so a text
    gets the same vector alone or in any batch. An empty text is embedded as the EOS token. A SplitModel embeds
    through `client`'s split: the client holds the texts' tokens and reads the states, the server runs its blocks on
    h_k (boundary noise included) and never sees a token.
    """
    lm = language_model(model)
    sides = model.sides(client) if hasattr(model, "sides") else None
    rows = [r or [tokenizer.eos_token_id] for r in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))  # similar lengths together: less padding
    out = torch.empty((len(rows), lm.config.hidden_size), dtype=torch.float32)
    device = model_device(model)
    with eval_mode(lm), _base_model_context(lm):
        # The decoder's last_hidden_state is BIGRec's hidden_states[-1] (after the final norm); no LM head needed.
        stack = decoder(lm)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            ids, mask = left_pad([rows[i] for i in chunk], tokenizer.pad_token_id)
            if sides is not None:
                hidden = sides.client.hidden(ids.to(device), mask.to(device))
            else:
                position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
                hidden = stack(input_ids=ids.to(device), attention_mask=mask.to(device),
                               position_ids=position_ids.to(device), use_cache=False).last_hidden_state
            out[chunk] = hidden[:, -1, :].float().cpu()
            if progress is not None:
                progress.update(len(chunk))
    return out


def model_identity(model) -> dict:
    """What decides the base model's embeddings: weights source, quantised blocks and dtype."""
    args = getattr(model, "model_args", None)
    if args is None:
        return {"class": type(language_model(model)).__name__, "name_or_path": language_model(model).name_or_path}
    ident = {"name": None if args.path else args.name, "quantize": args.quantize, "dtype": args.compute_dtype,
             "quantized_range": list(getattr(model, "quantized_range", ())) if args.quantize != "none" else []}
    noise = model.split_args.boundary_noise
    if noise:  # the server's blocks see noised h_k: other embeddings
        ident["boundary_noise"] = noise
    if args.path:  # a local directory: its weight files' sizes and times catch a re-exported model
        path = Path(args.path).expanduser().resolve()
        ident["path"] = str(path)
        ident["files"] = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.glob("*.safetensors"))
    return ident


def index_key(model, titles: dict[str, str]) -> str:
    """Hash of the model identity and the (item, title) table: the cache file name of an ItemIndex."""
    payload = json.dumps({"v": _INDEX_VERSION, "model": model_identity(model),
                          "items": sorted(titles.items(), key=lambda kv: natural_key(kv[0]))}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass
class ItemIndex:
    """Every item's title embedding under the base model, rows in `items` order (ids sorted naturally)."""

    items: list[str]
    titles: list[str]
    embeddings: torch.Tensor
    build_seconds: float = 0.0
    """Seconds to compute the embeddings, or to load them when `from_cache`."""
    from_cache: bool = False
    path: Optional[Path] = None
    row: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        self.row = {item: i for i, item in enumerate(self.items)}

    @classmethod
    def build(cls, model, tokenizer, titles: dict[str, str], cache_dir: Optional[str | Path] = None,
              batch_size: int = 32, progress=None) -> "ItemIndex":
        """Embed every title, or load the embeddings that `cache_dir` holds for this model and item table."""
        items = sorted(titles, key=natural_key)
        names = [titles[i] for i in items]
        start = time.perf_counter()
        path = Path(cache_dir) / f"items-{index_key(model, titles)}.safetensors" if cache_dir else None
        if path is not None and path.is_file():
            embeddings = _load(path, len(items))
            return cls(items, names, embeddings, time.perf_counter() - start, True, path)
        embeddings = embed_texts(model, tokenizer, names, batch_size, progress)
        seconds = time.perf_counter() - start
        if path is not None:
            _save(path, embeddings, len(items))
        return cls(items, names, embeddings, seconds, False, path)

    def popularity(self, train_pairs: Iterable[tuple[str, str]]) -> torch.Tensor:
        """Training interactions of each item (0 for items never trained on), aligned with the rows."""
        counts = torch.zeros(len(self.items))
        for _, item in train_pairs:
            if item in self.row:
                counts[self.row[item]] += 1
        return counts


def _save(path: Path, embeddings: torch.Tensor, n: int) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file({"embeddings": embeddings.contiguous()}, str(tmp), metadata={"items": str(n)})
    os.replace(tmp, path)  # atomic: a concurrent reader sees no file or the whole file


def _load(path: Path, n: int) -> torch.Tensor:
    from safetensors.torch import load_file

    embeddings = load_file(str(path))["embeddings"]
    if embeddings.shape[0] != n:
        raise FellrecError(f"item embedding cache holds {embeddings.shape[0]} rows for {n} items; delete it",
                           path=path)
    return embeddings


def title_trie(tokenizer, item_index: ItemIndex, grounding: str) -> Optional[TitleTrie]:
    """The trie that constrains generation to item titles (grounding "constrained"); None for free text ("l2")."""
    if grounding not in GROUNDINGS:
        raise FellrecError(f"unknown grounding {grounding!r}: use one of {', '.join(GROUNDINGS)}")
    return TitleTrie(tokenizer, item_index.titles) if grounding == "constrained" else None


def _minmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    return (x - lo) / (hi - lo).clamp(min=1e-12)


def rank_scores(generated: torch.Tensor, index: ItemIndex, popularity: Optional[torch.Tensor] = None,
                pop_gamma: float = 0.0) -> torch.Tensor:
    """U x items, lower is better: L2 distance, or BIGRec's (1 + p)^(-gamma) * d with d and p min-max normalised.

    `popularity` is one prior for every user (items,), or a collaborative prior per user (U x items: each user's
    SASRec scores, `eval.collaborative_aware`)."""
    dist = torch.cdist(generated.float(), index.embeddings.float())
    if popularity is None or pop_gamma == 0:
        return dist
    prior = popularity.float() if popularity.dim() == 2 else popularity.float().unsqueeze(0)
    return prior_adjusted(dist, prior, pop_gamma)


def prior_adjusted(distances: torch.Tensor, prior: torch.Tensor, gamma: float) -> torch.Tensor:
    """BIGRec's (1 + p)^(-gamma) * d, p and d min-max normalised per row (a one-row prior serves every user)."""
    return torch.pow(1 + _minmax(prior), -gamma) * _minmax(distances)


def ground(generated_embeddings: torch.Tensor, item_index: ItemIndex, histories: Sequence[Sequence[str]], k: int,
           popularity: Optional[torch.Tensor] = None, pop_gamma: float = 0.0,
           chunk_users: int = 256) -> list[list[str]]:
    """Each user's top `k` item ids, nearest first, items of their history excluded; ties go to the lower row.
    `popularity` as in `rank_scores` (a U x items prior has one row per user of `histories`)."""
    if len(generated_embeddings) != len(histories):
        raise ValueError(f"{len(generated_embeddings)} embeddings for {len(histories)} histories")
    ranked, per_user = [], popularity is not None and popularity.dim() == 2
    for start in range(0, len(histories), chunk_users):  # bounded memory: users x items scores per chunk
        prior = popularity[start:start + chunk_users] if per_user else popularity
        scores = rank_scores(generated_embeddings[start:start + chunk_users], item_index, prior, pop_gamma)
        seen = [{item_index.row[i] for i in h if i in item_index.row} for h in histories[start:start + chunk_users]]
        for row, rows_seen in enumerate(seen):
            scores[row, list(rows_seen)] = float("inf")
        # k + |history| candidates are enough: dropping the history still leaves k (or every other item).
        width = min(scores.shape[1], k + max(map(len, seen), default=0))
        top = torch.argsort(scores, dim=1, stable=True)[:, :width].tolist()
        ranked.extend([item_index.items[j] for j in row if j not in s][:k] for row, s in zip(top, seen))
    return ranked


def choose_pop_gamma(generated_embeddings: torch.Tensor, item_index: ItemIndex, valid_samples: Sequence[Sample],
                     popularity: torch.Tensor, grid: Sequence[float] = POP_GAMMAS,
                     metric: str = "ndcg@10") -> tuple[float, dict[float, float]]:
    """The grid value with the best `metric` on the given validation users (the first one on ties), and every score.

    Pass validation users only: choosing on test users would leak the test set into the reported numbers.
    """
    if not valid_samples:
        raise FellrecError("choosing pop_gamma needs validation users; there are none")
    k = int(metric.split("@")[1])
    histories = [s.history for s in valid_samples]
    targets = [set(s.targets) for s in valid_samples]
    scores = {}
    for gamma in grid:
        ranked = ground(generated_embeddings, item_index, histories, k, popularity, gamma)
        scores[float(gamma)] = mean_metrics(ranked, targets, ks=(k,))[metric]
    best = max(scores, key=lambda g: (scores[g], -list(scores).index(g)))
    return best, scores
