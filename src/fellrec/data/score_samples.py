"""Samples of the scoring objective: the prompt's tokens and, at chosen positions, the item row to predict there.

The prompt is tokenised part by part (prefix, one piece per history title, suffix; see PromptStyle.parts), so the end
of every title is a known position. The compact prompt drops its suffix ("Next movie:") here: the end of the last
title is then read like the end of every other title, and ranking costs a few tokens less per user. The end of the
prompt predicts the sample's target(s); with `targets="all"` the end of each history title also predicts the title
after it, as a causal sequential recommender trains on every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fellrec.data.collate import IGNORE_INDEX
from fellrec.data.prompts import PromptStyle
from fellrec.data.table import Sample
from fellrec.errors import FellrecError


@dataclass
class ScoreEncoded:
    input_ids: list[int]
    positions: list[int]
    """Token indices at which the model is read (the last one is the end of the prompt)."""
    targets: list[int]
    """The item row predicted at each position."""
    truncated: bool


class ScoreEncoder:
    """Samples -> ScoreEncoded for one tokenizer, prompt style and item table (`row`: item id -> table row)."""

    def __init__(self, tokenizer, style: PromptStyle, titles: dict[str, str], row: dict[str, int], max_length: int,
                 targets: str = "last"):
        self.tokenizer, self.style, self.titles, self.row = tokenizer, style, titles, row
        self.max_length, self.all_targets = max_length, targets == "all"
        self._piece_ids: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        if text not in self._piece_ids:  # pieces repeat across samples: each title is tokenised once
            self._piece_ids[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._piece_ids[text]

    def encode(self, sample: Sample) -> ScoreEncoded:
        prefix, pieces, suffix = self.style.parts([self.titles[i] for i in sample.history])
        ids, ends = list(self._ids(prefix)), []
        for piece in pieces:
            ids += self._ids(piece)
            ends.append(len(ids) - 1)
        if suffix and self.style.template != "compact":
            ids += self._ids(suffix)  # the compact prompt is read at its last title's separator, like every title
        if not ids:
            raise FellrecError(f"user {sample.user}: the prompt has no token")
        positions, targets = [], []
        if self.all_targets:  # the end of title j predicts title j + 1
            positions += ends[:-1]
            targets += [self.row[i] for i in sample.history[1:]]
        for target in sample.targets:
            positions.append(len(ids) - 1)
            targets.append(self.row[target])
        cut = max(0, len(ids) - self.max_length)  # an over-long prompt loses its start, never its end
        kept = [(p - cut, t) for p, t in zip(positions, targets) if p >= cut]
        return ScoreEncoded(ids[cut:], [p for p, _ in kept], [t for _, t in kept], cut > 0)

    def encode_all(self, samples: list[Sample]) -> list[ScoreEncoded]:
        return [self.encode(s) for s in samples]


def collate_scores(batch: list[ScoreEncoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-padded input_ids and attention_mask; positions (B x P, shifted by the padding) and targets (B x P,
    IGNORE_INDEX where a row has fewer positions). The end of every prompt is column -1."""
    width = max(len(e.input_ids) for e in batch)
    reads = max(len(e.positions) for e in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    positions = torch.zeros((len(batch), reads), dtype=torch.long)
    targets = torch.full((len(batch), reads), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(batch):
        pad = width - len(e.input_ids)
        input_ids[row, pad:] = torch.tensor(e.input_ids)
        attention_mask[row, pad:] = 1
        positions[row, :len(e.positions)] = torch.tensor(e.positions, dtype=torch.long) + pad
        targets[row, :len(e.targets)] = torch.tensor(e.targets, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "positions": positions, "targets": targets}
