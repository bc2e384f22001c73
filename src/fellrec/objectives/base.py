"""What an objective provides, and the one place that picks it from `model.objective`."""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Protocol

import torch

from fellrec.config import TrainArgs
from fellrec.data.table import RecData, Sample


class Objective(Protocol):
    name: str
    store: object
    """The AdapterStore whose clients `evaluate` ranks with."""

    def init_clients(self, store, client_users: dict[int, set[str]]) -> None:
        """Client-specific initial state, once before the first round (client_users: whose data each holds)."""

    def encode(self, samples: list[Sample]) -> list:
        """Training or validation samples, tokenised once."""

    def collate(self, batch: list) -> dict[str, torch.Tensor]:
        """A micro-batch of encoded samples as tensors."""

    def loss(self, sides, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean loss of a batch through one client's split model."""

    def param_groups(self, live: dict[str, torch.nn.Parameter], train: TrainArgs) -> list[dict]:
        """The optimizer's parameter groups over the live trainable tensors."""

    def evaluate(self, samples_per_client: dict[int, list[Sample]], mask: str, progress: bool = True) -> dict:
        """Each client's current adapter ranks all items for its users: {overall, clients, balance, popularity,
        popularity_clients, speed, protocol, ...} (see evaluate_clients)."""


def build_objective(cfg, model, tokenizer, data: RecData, item_index_fn: Callable[[], object],
                    autocast: Optional[Callable] = None) -> Objective:
    """The objective of `cfg.model.objective` (cfg: a run configuration, with its data, model, train and eval
    sections); `item_index_fn` gives the item index when first needed.

    The score objective attaches its head to the model here, so build the AdapterStore after this call and hand it
    to the objective (`objective.store = store`)."""
    from fellrec.objectives.generate import GenerateObjective
    from fellrec.objectives.score import ScoreObjective

    cls = ScoreObjective if cfg.model.objective == "score" else GenerateObjective
    return cls(cfg, model, tokenizer, data, item_index_fn, autocast or contextlib.nullcontext)


def lr_groups(live: dict[str, torch.nn.Parameter], lr: float, special: Callable[[str], bool],
              special_lr: Optional[float]) -> list[dict]:
    """Two AdamW groups: the tensors `special` names get `special_lr` (null: `lr`), the others `lr`."""
    groups = [{"params": [p for n, p in live.items() if not special(n)], "lr": lr},
              {"params": [p for n, p in live.items() if special(n)], "lr": special_lr or lr}]
    return [g for g in groups if g["params"]]
