"""Top-K ranking metrics with binary relevance (users may have several targets) and balance across clients."""

from __future__ import annotations

import math
from statistics import fmean, pstdev
from typing import Sequence

METRICS = ("recall", "ndcg", "hr", "mrr", "precision")
DEFAULT_KS = (5, 10, 20)


def user_metrics(ranked: Sequence[str], targets: set[str], k: int) -> dict[str, float]:
    """The five metrics at `k` for one user: `ranked` is the recommendation list, best first."""
    if not targets:
        raise ValueError("a user without targets cannot be scored")
    hit_ranks = [rank for rank, item in enumerate(ranked[:k], start=1) if item in targets]
    dcg = sum(1.0 / math.log2(rank + 1) for rank in hit_ranks)
    idcg = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(targets), k) + 1))
    return {
        f"recall@{k}": len(hit_ranks) / len(targets),
        f"ndcg@{k}": dcg / idcg,
        f"hr@{k}": float(bool(hit_ranks)),
        f"mrr@{k}": 1.0 / hit_ranks[0] if hit_ranks else 0.0,
        f"precision@{k}": len(hit_ranks) / k,
    }


def mean_metrics(rankings: Sequence[Sequence[str]], targets: Sequence[set[str]],
                 ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Each metric at each k, averaged over users."""
    if len(rankings) != len(targets):
        raise ValueError(f"{len(rankings)} rankings for {len(targets)} target sets")
    if not rankings:
        return {}
    per_user = [{name: value for k in ks for name, value in user_metrics(r, t, k).items()}
                for r, t in zip(rankings, targets)]
    return {name: fmean(u[name] for u in per_user) for name in per_user[0]}


def weighted_overall(per_client: dict[int, dict[str, float]], users: dict[int, int]) -> dict[str, float]:
    """Overall metrics: client means weighted by their number of test users (= the mean over all users)."""
    total = sum(users[c] for c in per_client)
    names = next(iter(per_client.values())).keys()
    return {name: sum(per_client[c][name] * users[c] for c in per_client) / total for name in names}


def balance(values: dict[int, float]) -> dict[str, float]:
    """How evenly a metric is spread over clients: std, worst client, max - min, coefficient of variation."""
    numbers = list(values.values())
    mean = fmean(numbers)
    std = pstdev(numbers)
    return {"std": std, "min": min(numbers), "max_minus_min": max(numbers) - min(numbers),
            "cv": std / mean if mean > 0 else float("nan")}
