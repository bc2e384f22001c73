"""Ranking metrics of score tensors (every item scored for every user) with torchmetrics' retrieval metrics.

The names and values are those of `metrics.user_metrics` (which stays for generated title lists); masked items are
left out of a user's ranking altogether, so they can neither be recommended nor push a target down.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics.retrieval import (RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG, RetrievalPrecision,
                                    RetrievalRecall)

from fellrec.evaluation.metrics import DEFAULT_KS

_CLASSES = {"recall": RetrievalRecall, "ndcg": RetrievalNormalizedDCG, "hr": RetrievalHitRate, "mrr": RetrievalMRR,
            "precision": RetrievalPrecision}


def _per_query(values: torch.Tensor, dim=None) -> torch.Tensor:
    return values  # torchmetrics' `aggregation` hook: keep one value per user


def per_user_metrics(scores: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor,
                     ks: Sequence[int] = DEFAULT_KS) -> dict[str, torch.Tensor]:
    """Users x items `scores` (higher is better), boolean `targets` and `masked` of the same shape: every metric at
    every k, one value per user ({"ndcg@10": tensor of len users, ...}). Every user needs a target."""
    if not bool(targets.any(dim=1).all()):
        raise ValueError("a user without targets cannot be scored")
    keep = ~masked
    indexes = torch.arange(len(scores)).unsqueeze(1).expand_as(scores)[keep]
    preds, target = scores.float()[keep], targets[keep]
    # torchmetrics' recall, precision and MRR count a target only where its score is > 0 (1.9); the shift keeps the
    # order and makes every score positive, so a score's sign never changes a metric.
    preds = preds - preds.min() + 1.0
    out = {}
    for k in ks:
        for name, cls in _CLASSES.items():
            metric = cls(top_k=k, aggregation=_per_query)
            out[f"{name}@{k}"] = metric(preds, target, indexes=indexes).reshape(-1)  # 0-dim for one user
    return out


def mean_retrieval_metrics(scores: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor,
                           ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """`per_user_metrics` averaged over users."""
    return {name: float(values.mean()) for name, values in per_user_metrics(scores, targets, masked, ks).items()}
