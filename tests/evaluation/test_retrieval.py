"""torchmetrics' retrieval metrics on score tensors agree with the metric code of generated title lists."""

from __future__ import annotations

import math

import pytest
import torch

from fellrec.evaluation.metrics import mean_metrics
from fellrec.evaluation.retrieval import mean_retrieval_metrics, per_user_metrics


def test_hand_computed_user_with_a_masked_item_above_the_target():
    """Scores 5 > 4 > 3 > 2 > 1 > 0 over items 0-5, item 0 masked, target item 3: ranked 1 2 3 4 5, the target third:
    ndcg@5 = 1/log2(4) = 0.5, mrr@5 = 1/3, precision@5 = 1/5; at k = 2 it is missed."""
    scores = torch.tensor([[5.0, 4, 3, 2, 1, 0]])
    targets = torch.tensor([[False, False, False, True, False, False]])
    masked = torch.tensor([[True, False, False, False, False, False]])
    got = mean_retrieval_metrics(scores, targets, masked, ks=(2, 5))
    assert got["ndcg@5"] == pytest.approx(0.5) and got["mrr@5"] == pytest.approx(1 / 3)
    assert got["precision@5"] == pytest.approx(0.2) and got["hr@5"] == 1.0 and got["recall@5"] == 1.0
    assert got["ndcg@2"] == 0.0 and got["hr@2"] == 0.0


def test_two_targets_and_per_user_values():
    """User 0: targets at ranks 1 and 3 -> ndcg@3 = (1 + 1/2) / (1 + 1/log2(3)), recall@3 = 1; user 1: no hit in
    the top 3 -> 0."""
    scores = torch.tensor([[9.0, 8, 7, 6], [1.0, 2, 3, 4]])
    targets = torch.tensor([[True, False, True, False], [True, False, False, False]])
    values = per_user_metrics(scores, targets, torch.zeros_like(targets), ks=(3,))
    expected = (1 + 0.5) / (1 + 1 / math.log2(3))
    assert values["ndcg@3"].tolist() == pytest.approx([expected, 0.0])
    assert values["recall@3"].tolist() == pytest.approx([1.0, 0.0])


def test_agrees_with_the_title_list_metrics_on_random_cases():
    g = torch.Generator().manual_seed(3)
    users, items = 50, 30
    scores = torch.randn(users, items, generator=g)
    targets = torch.rand(users, items, generator=g) < 0.08
    targets[torch.arange(users), torch.randint(0, items, (users,), generator=g)] = True
    masked = (torch.rand(users, items, generator=g) < 0.2) & ~targets
    ranked = []
    for u in range(users):
        s = scores[u].masked_fill(masked[u], -math.inf)
        ranked.append([str(i) for i in torch.argsort(s, descending=True).tolist() if not masked[u, i]])
    expected = mean_metrics(ranked, [{str(i) for i in t.nonzero().flatten().tolist()} for t in targets], (5, 10, 20))
    got = mean_retrieval_metrics(scores, targets, masked, (5, 10, 20))
    assert got.keys() == expected.keys()
    assert all(got[name] == pytest.approx(expected[name], abs=1e-6) for name in got)
    assert 0 < got["ndcg@10"] < 1  # the case is not degenerate


def test_a_user_without_a_target_is_an_error():
    with pytest.raises(ValueError, match="without targets"):
        none = torch.zeros(1, 3, dtype=torch.bool)
        mean_retrieval_metrics(torch.zeros(1, 3), none, none)
