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
    # A huge gap underflows the best client's share: its gamma must be 1, not NaN or an error. The worst client
    # holds the whole softmax (share 1), so its gamma is tanh(0.7 / 1 ** e) = tanh(0.7) in every round.
    for t in (0, 3):
        got = BalanceScheduler().gammas({0: 0.0, 1: 1000.0}, t)
        assert got[0] == 1.0
        assert got[1] == pytest.approx(0.6043677771171636, rel=1e-12)  # tanh(0.7)


# ----- a two-client case worked out by hand --------------------------------------------------------------------------
# l_1 - l_0 = T ln 3, so softmax(l / T) = (1, 3) / 4: shares l~ = (1/4, 3/4), whatever l_0 is.
#   t = 0: exponent (0 + 1) / 5 = 0.2
#          gamma_0 = tanh(0.7 / (1/4) ** 0.2) = tanh(0.7 * 4 ** 0.2)     = tanh(0.923656) = 0.727622
#          gamma_1 = tanh(0.7 / (3/4) ** 0.2) = tanh(0.7 * (4/3) ** 0.2) = tanh(0.741457) = 0.630024
#   t = 1: exponent 0.4: gamma_0 = tanh(0.7 * 4 ** 0.4) = 0.839291;  gamma_1 = tanh(0.7 * (4/3) ** 0.4) = 0.655777
#   t = 4: exponent 1:   gamma_0 = tanh(0.7 * 4) = tanh(2.8) = 0.992632;  gamma_1 = tanh(0.7 * 4/3) = 0.732144
# The release's exponent t + 1/beta equals (t + 1)/beta only at t = 0; at t = 1 it is 1.2 (gamma_0 0.998765,
# gamma_1 0.756769) and at t = 4 it is 4.2 (gamma_0 1.000000, gamma_1 0.981735).
T_LN3 = 0.05 * math.log(3)
HAND_TWO = {0: 2.0, 1: 2.0 + T_LN3}
HAND_GAMMAS = {
    0: (0.7276221663635073, 0.6300244518555733),
    1: (0.8392912073749801, 0.6557773541546704),
    4: (0.992631520201128, 0.7321442233518527),
}
RELEASE_GAMMAS = {1: (0.9987650376456388, 0.7567685385701056), 4: (1.0, 0.9817349499281769)}


@pytest.mark.parametrize("t", sorted(HAND_GAMMAS))
def test_two_clients_hand_computed(t):
    got = BalanceScheduler().gammas(HAND_TWO, t)
    assert [got[0], got[1]] == pytest.approx(list(HAND_GAMMAS[t]), rel=1e-9)
    # The same numbers from the closed forms written above.
    e = (t + 1) / 5
    assert got[0] == pytest.approx(math.tanh(0.7 * 4 ** e), rel=1e-12)
    assert got[1] == pytest.approx(math.tanh(0.7 * (4 / 3) ** e), rel=1e-12)


def test_two_clients_higher_loss_smaller_gamma_and_heating():
    sched = BalanceScheduler()
    by_round = [sched.gammas(HAND_TWO, t) for t in range(6)]
    assert all(g[1] < g[0] for g in by_round)  # client 1 has the higher loss in every round
    for c in (0, 1):
        series = [g[c] for g in by_round]
        assert all(a < b for a, b in zip(series, series[1:])), series  # strictly rising with t


@pytest.mark.parametrize("t", sorted(RELEASE_GAMMAS))
def test_release_precedence_slip_is_detected(t):
    got = BalanceScheduler().gammas(HAND_TWO, t)
    release = RELEASE_GAMMAS[t]
    # An implementation using t + 1/beta would give these; ours must differ clearly (by > 0.05 for client 1).
    assert abs(got[1] - release[1]) > 0.05
    assert got[1] == pytest.approx(HAND_GAMMAS[t][1], rel=1e-9)


def test_equal_losses_share_one_half():
    # Two equal losses: l~ = (1/2, 1/2), gamma = tanh(0.7 * 2 ** ((t + 1) / 5)):
    #   t = 0: tanh(0.7 * 1.148698) = tanh(0.804089) = 0.666316;  t = 1: tanh(0.7 * 2 ** 0.4) = 0.727622
    sched = BalanceScheduler()
    assert list(sched.gammas({0: 3.0, 1: 3.0}, 0).values()) == pytest.approx([0.6663164597570047] * 2, rel=1e-9)
    assert list(sched.gammas({0: 3.0, 1: 3.0}, 1).values()) == pytest.approx([0.7276221663635073] * 2, rel=1e-9)
    # alpha and beta enter as written: alpha = 1, beta = 1, t = 0: tanh(1 * 2 ** 1) = tanh(2) = 0.964028
    other = BalanceScheduler(alpha=1.0, beta=1.0)
    assert list(other.gammas({0: 3.0, 1: 3.0}, 0).values()) == pytest.approx([0.9640275800758169] * 2, rel=1e-9)


def test_shift_invariance_and_temperature():
    # softmax ignores a common shift: adding 10 to every loss changes nothing (raw losses instead of l~ would).
    sched = BalanceScheduler()
    shifted = {c: l + 10.0 for c, l in HAND_TWO.items()}
    assert list(sched.gammas(shifted, 0).values()) == pytest.approx(list(HAND_GAMMAS[0]), rel=1e-9)
    # Another temperature T' with a gap of exactly T': l / T' differs by 1, so the shares are (1, e) / (1 + e).
    hot = BalanceScheduler(temperature=T_LN3)
    share0, share1 = 1 / (1 + math.e), math.e / (1 + math.e)
    got = hot.gammas({0: 0.0, 1: T_LN3}, 0)
    assert [got[0], got[1]] == pytest.approx([math.tanh(0.7 / share0 ** 0.2), math.tanh(0.7 / share1 ** 0.2)],
                                             rel=1e-12)


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
