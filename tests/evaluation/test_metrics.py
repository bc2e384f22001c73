"""Ranking metrics against hand-computed cases and against torchmetrics; balance figures."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG, RetrievalPrecision, \
    RetrievalRecall

from fellrec.evaluation.metrics import balance, mean_metrics, user_metrics, weighted_overall


def test_single_target_hit_at_rank_three():
    m = user_metrics(["a", "b", "c", "d", "e"], {"c"}, k=5)
    assert m["recall@5"] == 1.0 and m["hr@5"] == 1.0
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(4))  # 0.5
    assert m["mrr@5"] == pytest.approx(1 / 3) and m["precision@5"] == pytest.approx(1 / 5)


def test_multi_target_user():
    # Targets {b, d, z}: hits at ranks 2 and 4 of 5; z is never recommended.
    m = user_metrics(["a", "b", "c", "d", "e"], {"b", "d", "z"}, k=5)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)  # three targets fit in the top 5
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx(dcg / idcg)
    assert m["mrr@5"] == pytest.approx(1 / 2) and m["precision@5"] == pytest.approx(2 / 5)


def test_idcg_is_capped_at_k():
    # Three targets but k = 2: a perfect top-2 scores NDCG 1 although recall is 2/3.
    m = user_metrics(["x", "y", "q"], {"x", "y", "z"}, k=2)
    assert m["ndcg@2"] == pytest.approx(1.0) and m["recall@2"] == pytest.approx(2 / 3)


def test_miss_and_cut_off():
    m = user_metrics(["a", "b", "c"], {"c"}, k=2)
    assert all(value == 0.0 for value in m.values())


def test_means_over_users_match_torchmetrics_on_random_rankings():
    rng = random.Random(0)
    items = [f"i{n}" for n in range(30)]
    rankings, targets = [], []
    for _ in range(40):
        rankings.append(rng.sample(items, 10))
        targets.append(set(rng.sample(items, rng.randint(1, 4))))
    ours = mean_metrics(rankings, targets, ks=(5, 10))
    # torchmetrics scores every ranked item by its position; unranked targets get a score below all of them.
    preds, target, indexes = [], [], []
    for user, (ranked, truth) in enumerate(zip(rankings, targets)):
        scored = {item: float(len(ranked) - pos) for pos, item in enumerate(ranked)}
        for item in sorted(set(ranked) | truth):
            preds.append(scored.get(item, -1.0))
            target.append(item in truth)
            indexes.append(user)
    preds, target, indexes = torch.tensor(preds), torch.tensor(target), torch.tensor(indexes)
    for k in (5, 10):
        reference = {
            f"recall@{k}": RetrievalRecall(top_k=k), f"ndcg@{k}": RetrievalNormalizedDCG(top_k=k),
            f"hr@{k}": RetrievalHitRate(top_k=k), f"mrr@{k}": RetrievalMRR(top_k=k),
            f"precision@{k}": RetrievalPrecision(top_k=k, adaptive_k=False),
        }
        for name, metric in reference.items():
            assert ours[name] == pytest.approx(metric(preds, target, indexes=indexes).item(), abs=1e-6), name


def test_weighted_overall_is_the_mean_over_users():
    per_client = {0: {"ndcg@10": 0.2}, 1: {"ndcg@10": 0.5}}
    assert weighted_overall(per_client, {0: 30, 1: 10})["ndcg@10"] == pytest.approx((0.2 * 30 + 0.5 * 10) / 40)


def test_balance_figures():
    b = balance({0: 0.1, 1: 0.2, 2: 0.3})
    assert b["min"] == 0.1 and b["max_minus_min"] == pytest.approx(0.2)
    assert b["std"] == pytest.approx(math.sqrt(((0.1 - 0.2) ** 2 + (0.3 - 0.2) ** 2) / 3))
    assert b["cv"] == pytest.approx(b["std"] / 0.2)
