"""Grounding on hand-made embeddings: nearest items, history masking, popularity-aware ranking, gamma choice."""

from __future__ import annotations

import math

import pytest
import torch

from fellrec.data.table import Sample
from fellrec.evaluation.grounding import ItemIndex, choose_pop_gamma, ground, rank_scores
from fellrec.evaluation.generation import parse_title

# Items on a line: a=0, b=1, c=2, d=3, e=10. Only e is popular in training.
INDEX = ItemIndex(list("abcde"), ["A", "B", "C", "D", "E"],
                  torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0], [10, 0]]))
POP = torch.tensor([0.0, 0, 0, 0, 10])
NEAR_B = torch.tensor([[0.9, 0.0]])  # distances a .9, b .1, c 1.1, d 2.1, e 9.1


def test_nearest_items_first():
    assert ground(NEAR_B, INDEX, [()], k=5) == [list("bacde")]
    assert ground(torch.tensor([[9.0, 1.0], [2.1, 0.0]]), INDEX, [(), ()], k=2) == [["e", "d"], ["c", "d"]]


def test_history_items_are_never_recommended():
    assert ground(NEAR_B, INDEX, [("b", "c")], k=3) == [["a", "d", "e"]]
    assert ground(NEAR_B, INDEX, [("b", "c")], k=5) == [["a", "d", "e"]]  # fewer than k left: never a history item
    assert ground(NEAR_B, INDEX, [("unknown-item",)], k=1) == [["b"]]  # ids outside the index are ignored


def test_ties_go_to_the_lower_row():
    assert ground(torch.tensor([[0.5, 0.0]]), INDEX, [()], k=2) == [["a", "b"]]


def test_popularity_gamma_zero_is_plain_distance():
    assert ground(NEAR_B, INDEX, [("b",)], k=4, popularity=POP, pop_gamma=0.0) == [list("acde")]


def test_large_gamma_lifts_the_popular_item():
    # Normalised distances: a .8/9, c 1/9, d 2/9, e 1; e's factor (1 + 1)^-100 puts it first once b is masked.
    assert ground(NEAR_B, INDEX, [("b",)], k=4, popularity=POP, pop_gamma=100.0) == [list("eacd")]
    # The nearest item has normalised distance 0, so no popularity factor can pass it.
    assert ground(NEAR_B, INDEX, [()], k=2, popularity=POP, pop_gamma=100.0) == [list("be")]


def test_popularity_score_formula():
    scores = rank_scores(NEAR_B, INDEX, POP, pop_gamma=1.0)[0]
    d = torch.tensor([0.9, 0.1, 1.1, 2.1, 9.1])
    expected = (d - 0.1) / 9.0 * torch.tensor([1, 1, 1, 1, 0.5])
    assert torch.allclose(scores, expected, atol=1e-6)


def test_choose_pop_gamma_on_validation_users():
    users = [Sample("u1", ("b",), ("e",)), Sample("u2", ("b",), ("e",))]
    gamma, scores = choose_pop_gamma(NEAR_B.repeat(2, 1), INDEX, users, POP, grid=(0.0, 1.0, 100.0))
    assert gamma == 100.0 and scores[100.0] == 1.0
    assert scores[0.0] == pytest.approx(1 / math.log2(5))  # e is fourth without popularity (a, c, d, e)
    # When the near item is the truth, popularity only hurts: the first of the tied best values wins.
    users = [Sample("u1", ("b",), ("a",))]
    gamma, scores = choose_pop_gamma(NEAR_B, INDEX, users, POP, grid=(0.0, 1.0, 100.0))
    assert gamma == 0.0 and scores == {0.0: 1.0, 1.0: 1.0, 100.0: pytest.approx(1 / math.log2(3))}


@pytest.mark.parametrize("text, title", [
    ('"Heat (1995)"', "Heat (1995)"),
    ('"Heat (1995)", "Casino (1995)"', "Heat (1995)"),
    ('"Heat (1995)"\n### Instruction: more', "Heat (1995)"),
    ('"Heat (19', "Heat (19"),  # cut by max_new_tokens: no closing quote
    ('"Heat (1995)\nrest', "Heat (1995)"),
    ('Heat (1995)\nmore', "Heat (1995)"),
    ('The user has watched the following movies before: "Heat (1995)", "Casino', "Heat (1995)"),
    ('  "Tom Clancy\'s "Splinter Cell", Chaos Theory"', 'Tom Clancy\'s "Splinter Cell", Chaos Theory'),
    ('', ''),
])
def test_parse_title(text, title):
    assert parse_title(text) == title


def test_shared_prefix_layout():
    from fellrec.evaluation.generation import prefix_layout, shared_prefix

    rows = [[5, 6, 7, 8], [5, 6, 9], [5, 6, 7, 1, 2]]
    assert shared_prefix(rows) == 2 and shared_prefix([[5, 6], [5, 6]]) == 1 and shared_prefix([[4], [4, 5]]) == 0
    ids, mask = prefix_layout(rows, pad_id=0, shared=2)
    assert ids.tolist() == [[5, 6, 0, 7, 8], [5, 6, 0, 0, 9], [5, 6, 7, 1, 2]]
    assert mask.tolist() == [[1, 1, 0, 1, 1], [1, 1, 0, 0, 1], [1, 1, 1, 1, 1]]


def test_a_per_user_collaborative_prior_lifts_each_users_own_item():
    """`eval.collaborative_aware`: each row of the prior is one user's SASRec scores. Two users at the same spot,
    b masked: user 0's SASRec likes d, user 1's likes a; with a large gamma each gets its own item first."""
    prior = torch.tensor([[0.0, 0, 0, 5, 0], [5.0, 0, 0, 0, 0]])
    same_spot = NEAR_B.repeat(2, 1)
    assert ground(same_spot, INDEX, [("b",), ("b",)], k=2, popularity=prior, pop_gamma=0.0) == [["a", "c"]] * 2
    assert ground(same_spot, INDEX, [("b",), ("b",)], k=2, popularity=prior, pop_gamma=100.0) == [["d", "a"],
                                                                                                   ["a", "c"]]
    # chunked users keep their own prior rows
    assert ground(same_spot, INDEX, [("b",), ("b",)], k=1, popularity=prior, pop_gamma=100.0, chunk_users=1) == [
        ["d"], ["a"]]
    # (1 + C)^(-gamma) * D by hand for user 0, gamma 1: C = (0, 0, 0, 1, 0), D = (d - 0.1) / 9
    d = torch.tensor([0.9, 0.1, 1.1, 2.1, 9.1])
    expected = (d - 0.1) / 9.0 * torch.tensor([1, 1, 1, 0.5, 1])
    assert torch.allclose(rank_scores(same_spot, INDEX, prior, pop_gamma=1.0)[0], expected, atol=1e-6)


def test_collaborative_gamma_is_chosen_on_the_validation_users_it_is_given():
    prior = torch.tensor([[0.0, 0, 0, 5, 0], [5.0, 0, 0, 0, 0]])
    follows_sasrec = [Sample("u1", ("b",), ("d",)), Sample("u2", ("b",), ("c",))]  # u2's truth is plain distance
    gamma, scores = choose_pop_gamma(NEAR_B.repeat(2, 1), INDEX, follows_sasrec, prior, grid=(0.0, 100.0))
    # gamma 0: d is third for u1 (a, c, d), c second for u2; gamma 100: d first for u1, c second for u2 (a, c)
    assert scores[0.0] == pytest.approx((1 / 2 + 1 / math.log2(3)) / 2)
    assert scores[100.0] == pytest.approx((1 + 1 / math.log2(3)) / 2) and gamma == 100.0
