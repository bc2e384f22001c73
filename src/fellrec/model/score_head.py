"""The scoring objective's head (RecFormer-like): an item table the client holds, a per-item bias and a learnt scale.

score(user, item) = exp(log_scale) x cos(user, item row) + bias[item]

The table starts from the base model's title embeddings (the grounding's ItemIndex, rows in its order), so before any
training the cosine already says which titles read alike; the bias can start at the client's log-counts, so the head
starts at the client's popularity ranking and learns the personal part on top. Its parameters are named without a
decoder-block index (`score_head.*`), which puts them on the client side of every split: they are uploaded and
aggregated with the adapters, checkpointed with them and never sent to the server.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

PREFIX = "score_head."


class ScoreHead(nn.Module):
    def __init__(self, embeddings: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.items = nn.Parameter(embeddings.detach().float().clone())
        self.bias = nn.Parameter(torch.zeros(len(embeddings)))
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        """users x items scores (float32)."""
        cosine = F.normalize(users.float(), dim=-1) @ F.normalize(self.items, dim=-1).T
        return self.log_scale.exp() * cosine + self.bias

    def named_state(self) -> dict[str, nn.Parameter]:
        """Its parameters under the names the adapter store uses."""
        return {PREFIX + name: p for name, p in self.named_parameters()}


def log_count_bias(items: Sequence[str], interactions: Iterable[str]) -> torch.Tensor:
    """log(1 + count) of each item (rows in `items` order) among `interactions` (a client's item ids)."""
    counts = Counter(interactions)
    return torch.tensor([math.log1p(counts.get(item, 0)) for item in items], dtype=torch.float32)
