"""Recommendations for a history typed by hand (`fellrec recommend`): titles in, grounded titles out."""

from __future__ import annotations

import difflib
from typing import Optional, Sequence

import torch

from fellrec.data.prompts import PromptStyle
from fellrec.errors import FellrecError
from fellrec.evaluation.grounding import ItemIndex, embed_texts, generate_titles, rank_scores, title_trie


def resolve_titles(item_index: ItemIndex, history_titles: Sequence[str]) -> list[str]:
    """The catalogue spelling of each typed title (exact, else the one case-insensitive match), or a FellrecError
    naming the unknown title and its closest catalogue titles."""
    known = set(item_index.titles)
    folded: dict[str, set[str]] = {}
    for title in known:
        folded.setdefault(title.casefold().strip(), set()).add(title)
    resolved = []
    for typed in history_titles:
        candidates = {typed} if typed in known else folded.get(typed.casefold().strip(), set())
        if len(candidates) != 1:
            close = difflib.get_close_matches(typed, sorted(known), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise FellrecError(f"unknown item title {typed!r}{hint}")
        resolved.append(next(iter(candidates)))
    return resolved


@torch.no_grad()
def recommend(model, store, tokenizer, item_index: ItemIndex, client: int, history_titles: Sequence[str],
              top_k: int = 10, style: PromptStyle = PromptStyle(), num_beams: int = 4, max_new_tokens: int = 24,
              grounding: str = "l2", popularity: Optional[torch.Tensor] = None,
              pop_gamma: float = 0.0) -> list[tuple[str, float]]:
    """`client`'s top `top_k` (title, score) for the history, best first; score is the grounding distance (L2, or the
    popularity-adjusted one), lower is closer. History titles are never recommended, and a title shared by several
    items is listed once."""
    if top_k < 1:
        raise FellrecError(f"top_k must be at least 1, got {top_k}")
    history = resolve_titles(item_index, history_titles)
    trie = title_trie(tokenizer, item_index, grounding)
    previous = store.active
    store.activate(client)
    try:
        generated = generate_titles(model, tokenizer, [style.prompt(history)], num_beams, max_new_tokens, 1,
                                    trie=trie, client=client)
    finally:
        if previous is not None:
            store.activate(previous)
    scores = rank_scores(embed_texts(model, tokenizer, generated, client=client), item_index, popularity, pop_gamma)[0]
    seen = set(history)
    out: list[tuple[str, float]] = []
    for row in torch.argsort(scores, stable=True).tolist():
        title = item_index.titles[row]
        if title not in seen:  # masks every item carrying a history title, and repeats of a listed title
            seen.add(title)
            out.append((title, float(scores[row])))
            if len(out) == top_k:
                break
    return out
