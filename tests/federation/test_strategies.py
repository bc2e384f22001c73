"""Strategy math on plain tensors: weights, aggregates, Jacobi order, sampling, FedProx term, errors."""

from __future__ import annotations

import math

import pytest
import torch

from fellrec.errors import FellrecError
from fellrec.federation.strategies import (STRATEGIES, Centralized, FedAvg, FedProx, FellRec, Local, build_strategy,
                                           strategy_options)


def st(a, b):
    """A two-tensor adapter: "lora_A" (2 values) and "lora_B" (1 value), flattened together as v = (a0, a1, b0)."""
    return {"lora_A": torch.tensor(a, dtype=torch.float32), "lora_B": torch.tensor(b, dtype=torch.float32)}


# v0 = (1, 0, 0), v1 = (3, 4, 0), v2 = (0, 0, 2):
#   cos(v0, v1) = 3 / 5 = 0.6 -> s^ = 0.8;  cos(v0, v2) = cos(v1, v2) = 0 -> s^ = 0.5
HAND = {0: st([1.0, 0.0], [0.0]), 1: st([3.0, 4.0], [0.0]), 2: st([0.0, 0.0], [2.0])}
S_HAT = [[1.0, 0.8, 0.5], [0.8, 1.0, 0.5], [0.5, 0.5, 1.0]]


def clone(states):
    return {c: {k: t.clone() for k, t in s.items()} for c, s in states.items()}


def random_states(ids, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {c: {"q.lora_A": torch.randn(2, 3, generator=g), "q.lora_B": torch.randn(3, 2, generator=g),
                "v.lora_A": torch.randn(2, 3, generator=g)} for c in ids}


def assert_states_equal(a, b):
    assert list(a) == list(b)
    for c in a:
        assert list(a[c]) == list(b[c])
        for k in a[c]:
            assert torch.equal(a[c][k], b[c][k]), (c, k)


# ----- FedAvg ------------------------------------------------------------------------------------------------------
def test_fedavg_weights_and_identical_average():
    states = {0: {"w": torch.tensor([8.0, 0.0])}, 1: {"w": torch.tensor([0.0, 8.0])}, 2: {"w": torch.tensor([4.0, 4.0])}}
    n = {0: 1, 1: 3, 2: 4}  # total 8 -> weights 1/8, 3/8, 4/8
    w = FedAvg().aggregation_weights(states, n, None, 0)
    assert torch.equal(w, torch.tensor([[0.125, 0.375, 0.5]] * 3, dtype=torch.float64))
    out = FedAvg().aggregate_round(states, n)
    # 8/8 + 0 + 4 * 4/8 = 3;  0 + 8 * 3/8 + 4 * 4/8 = 5
    for c in states:
        assert torch.equal(out[c]["w"], torch.tensor([3.0, 5.0]))
    assert out[0]["w"] is not out[1]["w"]  # identical values, separate tensors


def test_fedavg_broadcasts_to_clients_outside_the_sample():
    states = {0: {"w": torch.tensor([2.0])}, 1: {"w": torch.tensor([4.0])}, 2: {"w": torch.tensor([100.0])}}
    out = FedAvg().aggregate_round(states, {0: 1, 1: 1, 2: 1}, participants=[0, 1])
    assert [out[c]["w"].item() for c in (0, 1, 2)] == [3.0, 3.0, 3.0]  # client 2's 100 takes no part
    assert out[2]["w"] is not out[0]["w"] and states[2]["w"].item() == 100.0


def test_fedavg_two_clients_one_and_three_samples():
    # 1 and 3 samples: weights 1/4 and 3/4, the same aggregate for both clients: exactly 0.25 a + 0.75 b.
    a = {"lora_A": torch.tensor([4.0, -8.0, 0.5]), "lora_B": torch.tensor([[2.0]])}
    b = {"lora_A": torch.tensor([0.0, 8.0, 2.5]), "lora_B": torch.tensor([[-2.0]])}
    out = FedAvg().aggregate_round({0: a, 1: b}, {0: 1, 1: 3})
    expected = {"lora_A": torch.tensor([1.0, 4.0, 2.0]), "lora_B": torch.tensor([[-1.0]])}  # 0.25 a + 0.75 b by hand
    for c in (0, 1):
        for k in expected:
            assert torch.equal(out[c][k], expected[k]), (c, k, out[c][k])
    # Swapping the sample counts swaps the weights (a sample-blind mean would give 0.5 a + 0.5 b for both).
    out = FedAvg().aggregate_round({0: a, 1: b}, {0: 3, 1: 1})
    assert torch.equal(out[0]["lora_A"], torch.tensor([3.0, -4.0, 1.0]))  # 0.75 a + 0.25 b


# ----- FELLRec -----------------------------------------------------------------------------------------------------
def test_fellrec_weights_without_heating_hand_computed():
    w = FellRec(heating=False).aggregation_weights(HAND, {}, None, 0)
    # gamma = 1: rows are S_HAT normalised: row 0 and 1 sum to 2.3, row 2 to 2.0
    expected = torch.tensor([[1 / 2.3, 0.8 / 2.3, 0.5 / 2.3],
                             [0.8 / 2.3, 1 / 2.3, 0.5 / 2.3],
                             [0.25, 0.25, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-12)


def test_fellrec_aggregated_tensors_hand_computed():
    out = FellRec(heating=False).aggregate_round(HAND, {})
    # client 0: A = (1 * (1,0) + 0.8 * (3,4) + 0.5 * (0,0)) / 2.3 = (3.4, 3.2) / 2.3;  B = 0.5 * 2 / 2.3
    # client 1: A = (0.8 * (1,0) + 1 * (3,4)) / 2.3 = (3.8, 4) / 2.3;                  B = 1 / 2.3
    # client 2: A = 0.25 * (1,0) + 0.25 * (3,4) = (1, 1);                               B = 0.5 * 2 = 1
    expected = {0: st([3.4 / 2.3, 3.2 / 2.3], [1 / 2.3]), 1: st([3.8 / 2.3, 4 / 2.3], [1 / 2.3]),
                2: st([1.0, 1.0], [1.0])}
    for c in expected:
        for k in expected[c]:
            assert out[c][k].dtype == torch.float32
            torch.testing.assert_close(out[c][k], expected[c][k], rtol=0, atol=1e-6)


def test_fellrec_weights_with_explicit_gammas():
    from fellrec.federation.strategies import cosine_matrix, flatten_states, similarity_weights

    s = cosine_matrix(flatten_states(HAND, [0, 1, 2]))
    torch.testing.assert_close(s, torch.tensor([[1, .6, 0], [.6, 1, 0], [0, 0, 1]], dtype=torch.float64))
    w = similarity_weights(s, [0.5, 1.0, 0.25])
    # row 0: [1, 0.5*0.8, 0.5*0.5] = [1, 0.4, 0.25] / 1.65;  row 1: [0.8, 1, 0.5] / 2.3
    # row 2: [0.25*0.5, 0.25*0.5, 1] = [0.125, 0.125, 1] / 1.25 = [0.1, 0.1, 0.8]
    expected = torch.tensor([[1 / 1.65, 0.4 / 1.65, 0.25 / 1.65], [0.8 / 2.3, 1 / 2.3, 0.5 / 2.3], [0.1, 0.1, 0.8]],
                            dtype=torch.float64)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-12)


def test_fellrec_with_heating_uses_gammas_from_losses():
    losses = {0: 2.2, 1: 2.1, 2: 2.3}
    w = FellRec().aggregation_weights(HAND, {}, losses, 0)
    e = [math.exp((l - 2.3) / 0.05) for l in losses.values()]
    gam = [math.tanh(0.7 / (x / sum(e)) ** (1 / 5)) for x in e]
    rows = [[1.0 if i == j else gam[i] * S_HAT[i][j] for j in range(3)] for i in range(3)]
    expected = torch.tensor([[a / sum(r) for a in r] for r in rows], dtype=torch.float64)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-12)
    assert w[2, 2] > w[0, 0]  # the worst client (loss 2.3) keeps the most of itself


def test_fellrec_softmax_weighting_equals_softmax_without_heating():
    tau = 0.5
    w = FellRec(similarity_weighting="softmax", tau=tau, heating=False).aggregation_weights(HAND, {}, None, 0)
    cos = [[1, .6, 0], [.6, 1, 0], [0, 0, 1]]
    expected = [[math.exp(c / tau) / sum(math.exp(x / tau) for x in row) for c in row] for row in cos]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_fellrec_softmax_weighting_scales_off_diagonal_by_gamma():
    losses = {0: 2.2, 1: 2.1, 2: 2.3}
    w = FellRec(similarity_weighting="softmax", tau=1.0).aggregation_weights(HAND, {}, losses, 0)
    gam = FellRec().balance.gammas(losses, 0)  # the gammas themselves are tested in test_balance.py
    cos = [[1, .6, 0], [.6, 1, 0], [0, 0, 1]]
    rows = [[1.0 if i == j else gam[i] * math.exp(cos[i][j] - 1) for j in range(3)] for i in range(3)]
    expected = torch.tensor([[a / sum(r) for a in r] for r in rows], dtype=torch.float64)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-12)


def test_fellrec_identical_opposite_orthogonal_clients():
    # v0 = (1, 0); v1 = (2, 0) points the same way (cos 1, s^ 1); v2 = (-3, 0) the opposite way (cos -1, s^ 0);
    # v3 = (0, 1) is orthogonal to all (cos 0, s^ 1/2). Without heating (gamma = 1) the rows of A are:
    #   row 0 = row 1 = [1, 1, 0, 0.5] / 2.5 = [0.4, 0.4, 0, 0.2]
    #   row 2 = [0, 0, 1, 0.5] / 1.5         = [0, 0, 2/3, 1/3]
    #   row 3 = [0.5, 0.5, 0.5, 1] / 2.5     = [0.2, 0.2, 0.2, 0.4]
    states = {0: {"w": torch.tensor([1.0, 0.0])}, 1: {"w": torch.tensor([2.0, 0.0])},
              2: {"w": torch.tensor([-3.0, 0.0])}, 3: {"w": torch.tensor([0.0, 1.0])}}
    w = FellRec(heating=False).aggregation_weights(states, {}, None, 0)
    expected = torch.tensor([[0.4, 0.4, 0.0, 0.2], [0.4, 0.4, 0.0, 0.2], [0.0, 0.0, 2 / 3, 1 / 3],
                             [0.2, 0.2, 0.2, 0.4]], dtype=torch.float64)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-12)
    out = FellRec(heating=False).aggregate_round(states, {})
    # client 0 and 1: 0.4 (1, 0) + 0.4 (2, 0) + 0.2 (0, 1) = (1.2, 0.2)
    # client 2: 2/3 (-3, 0) + 1/3 (0, 1) = (-2, 1/3)      client 3: 0.2 (1 + 2 - 3, 0) + 0.4 (0, 1) = (0, 0.4)
    hand = {0: [1.2, 0.2], 1: [1.2, 0.2], 2: [-2.0, 1 / 3], 3: [0.0, 0.4]}
    for c, v in hand.items():
        torch.testing.assert_close(out[c]["w"], torch.tensor(v), rtol=0, atol=1e-6)


def test_fellrec_two_orthogonal_clients_with_heating_hand_computed():
    # Orthogonal: s^ = 1/2. Losses 2 and 2 + T ln 3 -> softmax shares 1/4, 3/4 -> round-0 gammas
    # tanh(0.7 * 4 ** 0.2) = 0.727622 and tanh(0.7 * (4/3) ** 0.2) = 0.630024 (see test_balance.py).
    # row 0 = [1, 0.5 * 0.727622] / 1.363811;  row 1 = [0.5 * 0.630024, 1] / 1.315012
    g0, g1 = 0.7276221663635073, 0.6300244518555733
    states = {0: {"w": torch.tensor([1.0, 0.0])}, 1: {"w": torch.tensor([0.0, 1.0])}}
    w = FellRec().aggregation_weights(states, {}, {0: 2.0, 1: 2.0 + 0.05 * math.log(3)}, 0)
    expected = torch.tensor([[1 / (1 + g0 / 2), (g0 / 2) / (1 + g0 / 2)],
                             [(g1 / 2) / (1 + g1 / 2), 1 / (1 + g1 / 2)]], dtype=torch.float64)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-9)
    assert w[0, 1] == pytest.approx(0.266761, abs=1e-6) and w[1, 0] == pytest.approx(0.239551, abs=1e-6)
    # The higher-loss client (1) takes less from the other than client 0 does.
    assert w[1, 0] < w[0, 1]


def test_fellrec_without_dynamic_aggregation_is_fedavg():
    n = {0: 1, 1: 3, 2: 4}
    w = FellRec(dynamic=False).aggregation_weights(HAND, n, None, 0)
    assert torch.equal(w, FedAvg().aggregation_weights(HAND, n, None, 0))


# ----- Jacobi order, sampling, local, centralised ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fellrec", "fedavg", "local"])
def test_client_order_does_not_matter(name):
    states = random_states([0, 1, 2, 3])
    n = {0: 5, 1: 1, 2: 7, 3: 2}
    losses = {0: 2.19, 1: 2.09, 2: 2.24, 3: 2.30}
    snapshot = clone(states)
    out = build_strategy(name).aggregate_round(states, n, losses, 1)
    assert_states_equal(states, snapshot)  # Jacobi: inputs are read, never written
    # Same clients, other insertion order: bit-identical per client.
    order = [2, 0, 3, 1]
    out2 = build_strategy(name).aggregate_round({c: states[c] for c in order}, {c: n[c] for c in order},
                                               {c: losses[c] for c in order}, 1)
    assert list(out2) == order
    for c in order:
        for k in states[c]:
            assert torch.equal(out2[c][k], out[c][k])
    # Relabelled clients (c -> perm[c]): the result is relabelled the same way (sums run in another order).
    perm = {0: 3, 1: 0, 2: 1, 3: 2}
    out3 = build_strategy(name).aggregate_round({perm[c]: states[c] for c in states}, {perm[c]: n[c] for c in n},
                                               {perm[c]: losses[c] for c in losses}, 1)
    for c in states:
        for k in states[c]:
            torch.testing.assert_close(out3[perm[c]][k], out[c][k], rtol=1e-6, atol=1e-7)


def test_jacobi_not_gauss_seidel():
    # Sequential in-place updating (the release) would feed client 0's new adapter into client 1's average.
    states = {0: {"w": torch.tensor([0.0, 1.0])}, 1: {"w": torch.tensor([1.0, 0.0])}}
    out = FellRec(heating=False).aggregate_round(states, {})
    # cos = 0 -> s^ = 0.5 -> both rows [2/3, 1/3] / [1/3, 2/3] of the ORIGINAL adapters
    torch.testing.assert_close(out[0]["w"], torch.tensor([1 / 3, 2 / 3]))
    torch.testing.assert_close(out[1]["w"], torch.tensor([2 / 3, 1 / 3]))


def test_local_leaves_states_unchanged():
    states = random_states([3, 5, 9])
    out = Local().aggregate_round(states, {3: 1, 5: 1, 9: 1})
    assert_states_equal(out, states)
    assert all(out[c][k] is not states[c][k] for c in states for k in states[c])  # fresh tensors, not aliases
    assert torch.equal(Local().aggregation_weights(states, {}, None, 0), torch.eye(3, dtype=torch.float64))


def test_sampled_subset_leaves_other_clients_untouched():
    states = random_states([0, 1, 2, 3, 4])
    losses = {0: 2.19, 1: 2.09, 2: 2.24, 3: 2.30, 4: 2.17}
    snapshot = clone(states)
    out = FellRec().aggregate_round(states, {}, losses, 0, participants=[1, 3])
    assert list(out) == [0, 1, 2, 3, 4]
    for c in (0, 2, 4):
        assert out[c] is states[c]
    assert_states_equal({c: states[c] for c in states}, snapshot)
    # Participants are aggregated among themselves only: same as a round with just those two clients.
    alone = FellRec().aggregate_round({1: states[1], 3: states[3]}, {}, {1: 2.09, 3: 2.30}, 0)
    for c in (1, 3):
        for k in states[c]:
            assert torch.equal(out[c][k], alone[c][k])
            assert not torch.equal(out[c][k], states[c][k])


def test_centralized_single_client_is_a_no_op():
    states = random_states([0])
    out = Centralized().aggregate_round(states, {0: 1024})
    assert_states_equal(out, states)
    with pytest.raises(FellrecError, match="one client"):
        Centralized().aggregate_round(random_states([0, 1]), {0: 1, 1: 1})


# ----- FedProx -----------------------------------------------------------------------------------------------------
def test_fedprox_term_value_and_gradient():
    w = {"a": torch.tensor([1.0, 2.0], requires_grad=True), "b": torch.tensor([[0.5]], requires_grad=True)}
    g = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[1.5]])}
    term = FedProx(mu=0.1).local_loss_term(w, g)
    # ||w - g||^2 = 1 + 4 + 1 = 6 -> 0.1 / 2 * 6 = 0.3
    assert term.item() == pytest.approx(0.3, rel=1e-6)
    term.backward()  # d/dw = mu * (w - g)
    torch.testing.assert_close(w["a"].grad, torch.tensor([0.1, 0.2]))
    torch.testing.assert_close(w["b"].grad, torch.tensor([[-0.1]]))
    assert FedAvg().local_loss_term(w, g).item() == 0.0
    assert FedProx(mu=0.0).local_loss_term(w, g).item() == 0.0


def test_fedprox_aggregates_like_fedavg():
    states, n = random_states([0, 1, 2]), {0: 2, 1: 5, 2: 1}
    assert_states_equal(FedProx(mu=1.0).aggregate_round(states, n), FedAvg().aggregate_round(states, n))


# ----- state, factory, errors --------------------------------------------------------------------------------------
def test_state_dict_round_trip():
    s = build_strategy("fellrec", similarity_weighting="softmax", tau=0.2, heating=False, beta=1, signal="ndcg")
    fresh = build_strategy("fellrec")
    fresh.load_state_dict(s.state_dict())
    assert fresh.state_dict() == s.state_dict()
    assert fresh.signal == "ndcg" and not fresh.balance.enabled
    p = build_strategy("fedprox")
    p.load_state_dict(build_strategy("fedprox", mu=0.5).state_dict())
    assert p.mu == 0.5
    with pytest.raises(FellrecError, match="fedavg"):
        build_strategy("fellrec").load_state_dict(build_strategy("fedavg").state_dict())


def test_factory():
    assert set(STRATEGIES) == {"local", "fedavg", "fedprox", "centralized", "fellrec"}
    for name in STRATEGIES:
        assert build_strategy(name).name == name
    assert build_strategy("fedprox", mu=0.3).mu == 0.3
    assert strategy_options("fedprox") == ["mu"]
    with pytest.raises(FellrecError, match="local, fedavg, fedprox, centralized, fellrec"):
        build_strategy("scaffold")
    with pytest.raises(FellrecError, match="mu"):
        build_strategy("fedavg", mu=0.1)


@pytest.mark.parametrize("case", [
    "empty", "key_mismatch", "shape_mismatch", "nan_state", "int_tensor", "missing_samples", "zero_samples",
    "missing_loss", "nan_loss", "unknown_participant", "bad_round", "bad_weights", "bad_option"])
def test_bad_inputs_raise(case):
    good = random_states([0, 1])
    n, losses = {0: 1, 1: 1}, {0: 2.0, 1: 2.1}
    with pytest.raises(FellrecError):
        if case == "empty":
            FedAvg().aggregate_round({}, {})
        elif case == "key_mismatch":
            FedAvg().aggregate_round({0: good[0], 1: {"other": torch.zeros(1)}}, n)
        elif case == "shape_mismatch":
            FedAvg().aggregate_round({0: {"w": torch.zeros(2)}, 1: {"w": torch.zeros(3)}}, n)
        elif case == "nan_state":
            FedAvg().aggregate_round({0: {"w": torch.zeros(2)}, 1: {"w": torch.tensor([1.0, float("nan")])}}, n)
        elif case == "int_tensor":
            Local().aggregate_round({0: {"w": torch.zeros(2, dtype=torch.long)}}, n)
        elif case == "missing_samples":
            FedAvg().aggregate_round(good, {0: 1})
        elif case == "zero_samples":
            FedAvg().aggregate_round(good, {0: 0, 1: 3})
        elif case == "missing_loss":
            FellRec().aggregate_round(good, n, {0: 2.0}, 0)
        elif case == "nan_loss":
            FellRec().aggregate_round(good, n, {0: 2.0, 1: float("nan")}, 0)
        elif case == "unknown_participant":
            Local().aggregate_round(good, n, participants=[0, 7])
        elif case == "bad_round":
            FellRec().aggregate_round(good, n, losses, -1)
        elif case == "bad_weights":
            Local().aggregate(good, torch.tensor([[0.5, 0.6], [0.5, 0.5]]))
        elif case == "bad_option":
            build_strategy("fellrec", similarity_weighting="cosine")
