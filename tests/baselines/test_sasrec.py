"""SASRec on known-answer data: the windows it trains on, a successor sequence it must learn, the causal mask,
determinism, and the collaborative-aware grounding score."""

from __future__ import annotations

import pytest
import torch

from fellrec.baselines import SASRec, SASRecArgs, collaborative_rank_scores, train_sasrec
from fellrec.baselines.sasrec import IGNORE, training_windows
from fellrec.data.table import Sample
from fellrec.errors import FellrecError

N = 20
ITEMS = [str(i) for i in range(N)]
SMALL = SASRecArgs(dim=32, dropout=0.0, max_len=5, epochs=40, batch_size=32, lr=3e-3, min_steps=0)


def successor_windows():
    """Item i is always followed by item i + 1 (mod N); every window of 1..4 items ending anywhere."""
    return [Sample("u", tuple(str((end - k + 1 + j) % N) for j in range(k)), (str((end + 1) % N),))
            for end in range(N) for k in range(1, 5)]


def test_training_windows_known_answer():
    model = SASRec(["1", "2", "3", "4", "5"], SASRecArgs(max_len=4))
    inputs, labels = training_windows(model, [Sample("u", ("x", "1", "2", "3"), ("4", "5"))])  # "x" is unknown
    # item "k" has id k (0 = padding) and logit column k - 1
    assert inputs.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert labels.tolist() == [[IGNORE, 1, 2, 3], [IGNORE, IGNORE, IGNORE, 4]]  # the history is trained once
    target_only = SASRec(["1", "2", "3", "4", "5"], SASRecArgs(max_len=4, all_positions=False))
    assert training_windows(target_only, [Sample("u", ("1", "2"), ("3",))])[1].tolist() == [[IGNORE] * 3 + [2]]
    with pytest.raises(FellrecError, match="known target"):
        training_windows(model, [Sample("u", ("1",), ("nope",))])


def test_learns_that_item_i_is_followed_by_i_plus_1():
    model = train_sasrec(successor_windows(), ITEMS, SMALL, seed=0)
    histories = [(str((i - 1) % N), str(i)) for i in range(N)]
    top = model.score(histories).argmax(dim=1).tolist()
    assert top == [(i + 1) % N for i in range(N)]


def test_columns_follow_the_given_item_order():
    order = list(reversed(ITEMS))  # column j is item order[j]
    model = train_sasrec(successor_windows(), order, SMALL, seed=0)
    top = model.score([("6", "7")]).argmax(dim=1).item()
    assert order[top] == "8"


def test_same_seed_same_model_other_seed_other_model():
    args = SASRecArgs(dim=16, max_len=5, epochs=2, batch_size=16, min_steps=0)
    histories = [("1", "2"), ("5",)]
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = train_sasrec(successor_windows(), ITEMS, args, seed=3).score(histories)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random stream is untouched
    b = train_sasrec(successor_windows(), ITEMS, args, seed=3).score(histories)
    c = train_sasrec(successor_windows(), ITEMS, args, seed=4).score(histories)
    assert a.shape == (2, N) and torch.equal(a, b) and not torch.equal(a, c)


def test_attention_is_causal_and_reads_the_newest_items():
    torch.manual_seed(0)
    model = SASRec(ITEMS, SASRecArgs(dim=16, max_len=5, dropout=0.0)).eval()
    ids = torch.tensor([[0, 3, 4, 5, 6]])
    changed = torch.tensor([[0, 3, 4, 5, 9]])
    with torch.no_grad():
        h, h2 = model.hidden(ids), model.hidden(changed)
    torch.testing.assert_close(h[:, :4], h2[:, :4], rtol=0, atol=0)  # no position sees a later one
    assert not torch.allclose(h[:, 4], h2[:, 4])
    assert torch.isfinite(h).all()  # the padded position attends to itself: no NaN
    long = tuple(str(i) for i in range(12))
    assert torch.equal(model.score([long]), model.score([long[-5:]]))  # older items than max_len are dropped


def test_collaborative_rank_scores_known_answer():
    distances = torch.tensor([[1.0, 2.0, 3.0, 5.0]])  # D = (0, .25, .5, 1)
    sasrec = torch.tensor([[0.0, 0.0, 9.0, 3.0]])  # C = (0, 0, 1, 1/3)
    got = collaborative_rank_scores(distances, sasrec, 2.0)
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.25, 0.125, 0.5625]], dtype=torch.float64))
    assert got.argsort(dim=1).tolist() == [[0, 2, 1, 3]]  # the collaborative term lifts item 2 over item 1
    plain = collaborative_rank_scores(distances, sasrec, 0.0)
    torch.testing.assert_close(plain, torch.tensor([[0.0, 0.25, 0.5, 1.0]], dtype=torch.float64))
    flat = collaborative_rank_scores(distances, torch.full((1, 4), 7.0), 5.0)  # no collaborative signal: C = 0
    torch.testing.assert_close(flat, plain)


@pytest.mark.parametrize("case", ["shape", "inf", "gamma"])
def test_collaborative_rank_scores_rejects_bad_input(case):
    d, s = torch.rand(2, 3), torch.rand(2, 3)
    with pytest.raises(FellrecError):
        if case == "shape":
            collaborative_rank_scores(d, s[:, :2], 1.0)
        elif case == "inf":
            d[0, 1] = float("inf")
            collaborative_rank_scores(d, s, 1.0)
        else:
            collaborative_rank_scores(d, s, -1.0)


def test_few_windows_still_get_min_steps(monkeypatch):
    steps = []
    step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (steps.append(1), step(self, *a, **k))[1])
    windows = successor_windows()  # 80 windows, batch 32: 3 steps an epoch
    train_sasrec(windows, ITEMS, SASRecArgs(dim=8, max_len=5, epochs=1, batch_size=32, min_steps=10), seed=0)
    assert len(steps) == 12  # ceil(10 / 3) = 4 epochs
    steps.clear()
    train_sasrec(windows, ITEMS, SASRecArgs(dim=8, max_len=5, epochs=5, batch_size=32, min_steps=10), seed=0)
    assert len(steps) == 15  # epochs already give more than min_steps
