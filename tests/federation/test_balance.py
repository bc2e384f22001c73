"""Curriculum heating against the worked example, computed independently with the math module."""

from __future__ import annotations

import math

import pytest

from fellrec.errors import FellrecError
from fellrec.federation.balance import BalanceScheduler

LOSSES = [2.19, 2.09, 2.24, 2.30, 2.17]
SIGNALS = dict(enumerate(LOSSES))


def expected_gammas(losses, t, alpha=0.7, beta=5.0, temperature=0.05):
    """METHOD.md section 4 written out by hand: l~ = softmax(l / T), gamma = tanh(alpha / l~ ** ((t + 1) / beta))."""
    top = max(losses)
    e = [math.exp((l - top) / temperature) for l in losses]
    shares = [x / sum(e) for x in e]
    return [math.tanh(alpha / s ** ((t + 1) / beta)) for s in shares]


@pytest.mark.parametrize("t", [0, 4, 20])
def test_gammas_match_worked_example(t):
    got = BalanceScheduler(alpha=0.7, beta=5, temperature=0.05).gammas(SIGNALS, t)
    assert list(got) == [0, 1, 2, 3, 4]
    assert list(got.values()) == pytest.approx(expected_gammas(LOSSES, t), rel=1e-12, abs=1e-12)


def test_worked_example_pinned_values():
    # Rounded values of the worked example (printed in the report); a second anchor besides the formula above.
    sched = BalanceScheduler()
    assert list(sched.gammas(SIGNALS, 0).values()) == pytest.approx(
        [0.827106, 0.942360, 0.746590, 0.640640, 0.855709], abs=1e-6)
    assert list(sched.gammas(SIGNALS, 4).values()) == pytest.approx(
        [1.0, 1.0, 0.998138, 0.782151, 1.0], abs=1e-6)


def test_highest_loss_gets_smallest_gamma_and_all_heat_up():
    sched = BalanceScheduler()
    g0 = sched.gammas(SIGNALS, 0)
    assert min(g0, key=g0.get) == 3  # loss 2.30, the highest
    assert max(g0, key=g0.get) == 1  # loss 2.09, the lowest
    rounds = [sched.gammas(SIGNALS, t) for t in (0, 4, 20)]
    for c in SIGNALS:
        assert rounds[0][c] < rounds[1][c] or rounds[0][c] == pytest.approx(1.0, abs=1e-9)
        assert rounds[1][c] <= rounds[2][c]
    assert min(rounds[2].values()) > 0.99
    assert rounds[0][3] < 0.65 and rounds[1][3] < 0.8  # the worst client is still clearly held back at t = 4


def test_exponent_is_t_plus_one_over_beta():
    # The release's `epoch+1/beta` would use t + 0.2 = 4.2 at t = 4; we use (4 + 1) / 5 = 1.
    got = BalanceScheduler().gammas(SIGNALS, 4)[3]
    share = 1 / sum(math.exp((l - 2.30) / 0.05) for l in LOSSES)
    assert got == pytest.approx(math.tanh(0.7 / share), rel=1e-12)
    assert got != pytest.approx(math.tanh(0.7 / share ** 4.2), rel=1e-3)


def test_disabled_gives_one():
    assert BalanceScheduler(enabled=False).gammas(SIGNALS, 0) == {c: 1.0 for c in SIGNALS}


def test_beta_one_still_heats():
    sched = BalanceScheduler(beta=1)
    g0 = sched.gammas(SIGNALS, 0)
    assert list(g0.values()) == pytest.approx(expected_gammas(LOSSES, 0, beta=1.0), rel=1e-12)
    assert g0[3] < 0.79  # heating is applied, not skipped (the release's beta == 1 shortcut)
    assert sched.gammas(SIGNALS, 3)[3] > g0[3]


def test_only_participants_enter_the_softmax():
    sub = {0: 2.19, 3: 2.30}
    got = BalanceScheduler().gammas(sub, 0)
    assert list(got.values()) == pytest.approx(expected_gammas([2.19, 2.30], 0), rel=1e-12)


def test_ranking_metric_signal_is_one_minus_metric():
    recall = {0: 0.10, 1: 0.30}
    got = BalanceScheduler(signal="recall").gammas(recall, 0)
    assert list(got.values()) == pytest.approx(expected_gammas([0.90, 0.70], 0), rel=1e-12)
    assert got[0] < got[1]  # lower recall = worse = smaller gamma


def test_extreme_signals_stay_finite():
    # A huge gap underflows the best client's share: its gamma must be 1, not NaN or an error.
    got = BalanceScheduler().gammas({0: 0.0, 1: 1000.0}, 0)
    assert got[0] == 1.0 and 0 < got[1] < 1


def test_state_dict_round_trip():
    sched = BalanceScheduler(alpha=0.5, beta=2, temperature=0.1, enabled=False, signal="ndcg")
    other = BalanceScheduler()
    other.load_state_dict(sched.state_dict())
    assert other.state_dict() == sched.state_dict()


@pytest.mark.parametrize("signals", [{}, {0: float("nan"), 1: 2.0}, {0: float("inf")}, {0: "high"}])
def test_bad_signals_raise(signals):
    with pytest.raises(FellrecError):
        BalanceScheduler().gammas(signals, 0)


def test_bad_settings_raise():
    with pytest.raises(FellrecError, match="train_loss, val_loss, recall, ndcg"):
        BalanceScheduler(signal="accuracy")
    with pytest.raises(FellrecError):
        BalanceScheduler(temperature=0)
    with pytest.raises(FellrecError):
        BalanceScheduler(beta=-1)
    with pytest.raises(FellrecError):
        BalanceScheduler(signal="recall").gammas({0: 1.5}, 0)
    with pytest.raises(FellrecError):
        BalanceScheduler().gammas(SIGNALS, -1)
    with pytest.raises(FellrecError):
        BalanceScheduler().load_state_dict({"alpha": 1.0})
