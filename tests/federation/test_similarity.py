"""fed.similarity_on (issue 11): the four cosines on hand-made adapters, the known-answer federations (two groups of
identical clients; all clients identical), and the "FELLRec equals Local" anomaly of compare.md, on plain tensors."""

from __future__ import annotations

import math

import pytest
import torch

from fellrec.errors import FellrecError
from fellrec.federation.local import lr_lambda
from fellrec.federation.strategies import (FedAvg, FellRec, Local, build_strategy, cosine_matrix, flatten_states,
                                           lora_pairs, similarity_matrix)

MODES = ("params", "update", "drift", "product")
A, B = "q.lora_A.weight", "q.lora_B.weight"


def lora(a, b, **extra):
    """One client's adapter: a LoRA pair (A: r x in, B: out x r) plus any other tensors."""
    state = {A: torch.tensor(a, dtype=torch.float32), B: torch.tensor(b, dtype=torch.float32)}
    return {**state, **{k: torch.tensor(v, dtype=torch.float32) for k, v in extra.items()}}


def cos(s, i, j):
    return s[i, j].item()


# ----- the four modes on hand-made adapters ------------------------------------------------------------------------
def test_lora_pairs_by_name():
    state = {"x.q_proj.lora_A.weight": torch.zeros(2, 5), "x.q_proj.lora_B.weight": torch.zeros(3, 2),
             "x.v_proj.lora_A.default.weight": torch.zeros(2, 5), "x.v_proj.lora_B.default.weight": torch.zeros(4, 2),
             "y.lora_A.weight": torch.zeros(2, 5),  # a lone A: no partner, compared as a plain tensor
             "item_table.weight": torch.zeros(7, 3), "item_bias": torch.zeros(7)}
    pairs, others = lora_pairs(state)
    assert pairs == [("x.q_proj.lora_A.weight", "x.q_proj.lora_B.weight"),
                     ("x.v_proj.lora_A.default.weight", "x.v_proj.lora_B.default.weight")]
    assert others == ["y.lora_A.weight", "item_table.weight", "item_bias"]


def test_params_is_the_release_cosine():
    g = torch.Generator().manual_seed(3)
    states = {c: {A: torch.randn(2, 3, generator=g), B: torch.randn(4, 2, generator=g)} for c in (5, 1, 8)}
    ids = [1, 5, 8]
    torch.testing.assert_close(similarity_matrix("params", states, ids),
                               cosine_matrix(flatten_states(states, ids)), rtol=0, atol=1e-12)


def test_product_cosine_hand_computed():
    # r = 1: B.A is an outer product.  c0: [[1,0],[0,0]];  c1: [[0,0],[1,0]];
    # c2: A = (2,0), B = (3,0) -> [[6,0],[0,0]];  c3: A = (1,1), B = (1,1) -> [[1,1],[1,1]]
    states = {0: lora([[1, 0]], [[1], [0]]), 1: lora([[1, 0]], [[0], [1]]), 2: lora([[2, 0]], [[3], [0]]),
              3: lora([[1, 1]], [[1], [1]])}
    s = similarity_matrix("product", states, [0, 1, 2, 3])
    assert cos(s, 0, 1) == 0.0  # orthogonal weight changes, although A is identical
    assert cos(s, 0, 2) == pytest.approx(1.0, abs=1e-12)  # same direction, 6 times longer
    assert cos(s, 0, 3) == pytest.approx(0.5, abs=1e-12)  # <E11, ones> / (1 * 2)
    assert cos(s, 1, 3) == pytest.approx(0.5, abs=1e-12)
    # The release's cosine sees A and B, not their product: c0 and c1 look alike there.
    assert cos(similarity_matrix("params", states, [0, 1, 2, 3]), 0, 1) == pytest.approx(0.5, abs=1e-12)


def test_product_equals_materialised_product_and_ignores_the_lora_gauge():
    g = torch.Generator().manual_seed(0)
    states = {c: {A: torch.randn(3, 5, generator=g), B: torch.randn(4, 3, generator=g),
                  "v.lora_A.weight": torch.randn(2, 6, generator=g), "v.lora_B.weight": torch.randn(6, 2, generator=g)}
              for c in range(3)}
    ids = [0, 1, 2]
    deltas = torch.stack([torch.cat([(st[B] @ st[A]).reshape(-1),
                                     (st["v.lora_B.weight"] @ st["v.lora_A.weight"]).reshape(-1)]).double()
                          for st in states.values()])
    torch.testing.assert_close(similarity_matrix("product", states, ids), cosine_matrix(deltas), rtol=0, atol=1e-6)
    # B.A = (B M)(M^-1 A): the same weight change written with other factors has the same product cosine,
    # while the raw-parameter cosine moves.
    m = torch.randn(3, 3, generator=g) + 3 * torch.eye(3)
    regauged = {**states, 0: {**states[0], B: states[0][B] @ m, A: torch.linalg.solve(m, states[0][A])}}
    torch.testing.assert_close(similarity_matrix("product", regauged, ids),
                               similarity_matrix("product", states, ids), rtol=0, atol=1e-5)
    assert not torch.allclose(similarity_matrix("params", regauged, ids), similarity_matrix("params", states, ids),
                              atol=1e-3)


def test_update_and_drift_hand_computed_with_the_item_table():
    # Every client starts from the same A = (1, 0), B = 0 and item table (0, 0).
    initial = lora([[1, 0]], [[0]], item_table=[[0.0, 0.0]])
    start = {0: initial, 1: lora([[1, 0]], [[0]], item_table=[[5.0, 5.0]]), 2: initial}
    now = {0: lora([[1, 0]], [[1]], item_table=[[0.0, 0.0]]),   # update = drift = (0, 0 | 1 | 0, 0)
           1: lora([[1, 0]], [[1]], item_table=[[5.0, 6.0]]),   # update (0, 0 | 1 | 0, 1), drift (0, 0 | 1 | 5, 6)
           2: lora([[1, 0]], [[0]], item_table=[[0.0, 3.0]])}   # update = drift = (0, 0 | 0 | 0, 3)
    ids = [0, 1, 2]
    up = similarity_matrix("update", now, ids, start_states=start)
    assert cos(up, 0, 1) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert cos(up, 0, 2) == 0.0
    assert cos(up, 1, 2) == pytest.approx(1 / math.sqrt(2), abs=1e-12)  # the item table joins the vector
    dr = similarity_matrix("drift", now, ids, initial=initial)
    assert cos(dr, 0, 1) == pytest.approx(1 / math.sqrt(62), abs=1e-12)
    assert cos(dr, 1, 2) == pytest.approx(18 / (math.sqrt(62) * 3), abs=1e-12)
    # product: B.A per module, the item table as its drift: c0 (1, 0 | 0, 0), c1 (1, 0 | 5, 6), c2 (0, 0 | 0, 3)
    pr = similarity_matrix("product", now, ids, initial=initial)
    assert cos(pr, 0, 1) == pytest.approx(1 / math.sqrt(62), abs=1e-12)
    assert cos(pr, 0, 2) == 0.0


def test_zero_change_has_cosine_zero():
    state = lora([[1, 0]], [[1]])
    s = similarity_matrix("update", {0: state, 1: lora([[1, 0]], [[2]])}, [0, 1], start_states={0: state, 1: state})
    assert s.tolist() == [[1.0, 0.0], [0.0, 1.0]]  # client 0 did not move: no direction to compare


def test_centred_cosine_hand_computed():
    # v = (3, 0), (0, 3), (0, 0); mean (1, 1); centred (2, -1), (-1, 2), (-1, -1).
    states = {0: {"t": torch.tensor([3.0, 0.0])}, 1: {"t": torch.tensor([0.0, 3.0])}, 2: {"t": torch.zeros(2)}}
    plain = similarity_matrix("params", states, [0, 1, 2])
    assert plain[0, 1].item() == 0.0 and plain[0, 2].item() == 0.0  # orthogonal, and a zero vector
    centred = similarity_matrix("params", states, [0, 1, 2], centred=True)
    assert cos(centred, 0, 1) == pytest.approx(-4 / 5, abs=1e-12)
    assert cos(centred, 0, 2) == pytest.approx(-1 / math.sqrt(10), abs=1e-12)
    assert cos(centred, 1, 2) == pytest.approx(-1 / math.sqrt(10), abs=1e-12)
    # A direction every client shares leaves the centred cosines as they were: (3, 0) + c etc.
    shifted = {i: {"t": st["t"] + torch.tensor([7.0, -4.0])} for i, st in states.items()}
    assert similarity_matrix("params", shifted, [0, 1, 2])[0, 1].item() > 0.9
    torch.testing.assert_close(similarity_matrix("params", shifted, [0, 1, 2], centred=True), centred,
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["update_without_start", "update_missing_client", "drift_without_initial",
                                  "product_table_without_initial", "start_shape", "unknown_mode"])
def test_missing_references_raise(case):
    states = {0: lora([[1, 0]], [[1]], item_bias=[0.0]), 1: lora([[0, 1]], [[1]], item_bias=[1.0])}
    with pytest.raises(FellrecError) as err:
        if case == "update_without_start":
            FellRec(similarity_on="update", heating=False).aggregate_round(states, {})
        elif case == "update_missing_client":
            FellRec(similarity_on="update", heating=False).aggregate_round(states, {}, start_states={0: states[0]})
        elif case == "drift_without_initial":
            FellRec(similarity_on="drift", heating=False).aggregate_round(states, {})
        elif case == "product_table_without_initial":
            FellRec(similarity_on="product", heating=False).aggregate_round(states, {})
        elif case == "start_shape":
            bad = {**states[0], "item_bias": torch.zeros(2)}
            FellRec(similarity_on="update", heating=False).aggregate_round(states, {}, start_states={0: bad, 1: bad})
        else:
            build_strategy("fellrec", similarity_on="weights")
    assert {"update_without_start": "start_states", "update_missing_client": "clients [1]",
            "drift_without_initial": "set_initial", "product_table_without_initial": "set_initial",
            "start_shape": "shape", "unknown_mode": "params, update, drift, product"}[case] in str(err.value)


def test_product_of_lora_pairs_alone_needs_no_initial_adapter():
    states = {0: lora([[1, 0]], [[1], [0]]), 1: lora([[1, 0]], [[0], [1]])}
    w = FellRec(similarity_on="product", heating=False).aggregation_weights(states, {}, None, 0)
    torch.testing.assert_close(w, torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]], dtype=torch.float64))


def test_strategy_exposes_the_similarity_and_keeps_the_option():
    states = {0: lora([[1, 0]], [[1], [0]]), 1: lora([[1, 0]], [[0], [1]])}
    strategy = build_strategy("fellrec", similarity_on="product", heating=False, similarity_centred=True)
    strategy.aggregate_round(states, {})
    torch.testing.assert_close(strategy.last_similarity, torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64),
                               rtol=0, atol=1e-12)  # two clients always centre to opposite vectors
    fresh = build_strategy("fellrec")
    assert fresh.similarity_on == "params"  # the bare class is the release; runs take fed.similarity_on
    fresh.load_state_dict(strategy.state_dict())
    assert (fresh.similarity_on, fresh.similarity_centred) == ("product", True)
    old = {k: v for k, v in strategy.state_dict().items()  # a checkpoint from before both options
           if k not in ("similarity_on", "similarity_centred")}
    fresh.load_state_dict(old)
    assert (fresh.similarity_on, fresh.similarity_centred) == ("params", False)
    off = FellRec(dynamic=False, similarity_on="update")
    off.aggregate_round(states, {0: 1, 1: 1})
    assert off.last_similarity is None  # FedAvg weights: nothing compared
    assert FedAvg().last_similarity is None and Local().initial_state is None


def test_set_initial_keeps_a_detached_copy():
    live = {A: torch.ones(1, 2, requires_grad=True), B: torch.zeros(1, 1)}
    strategy = FellRec(similarity_on="drift")
    strategy.set_initial(live)
    with torch.no_grad():
        live[A].add_(5.0)
    assert strategy.initial_state[A].tolist() == [[1.0, 1.0]] and not strategy.initial_state[A].requires_grad


# ----- known-answer federations ------------------------------------------------------------------------------------
IN, OUT, RANK = 6, 4, 2
W0 = torch.randn(OUT, IN, generator=torch.Generator().manual_seed(7)) * 0.1


def initial_adapter() -> dict:
    """LoRA as peft starts it (A random, B = 0) plus a scoring bias (a non-LoRA tensor, like item_bias)."""
    g = torch.Generator().manual_seed(0)
    return {A: torch.randn(RANK, IN, generator=g) / math.sqrt(IN), B: torch.zeros(OUT, RANK),
            "item_bias": torch.zeros(OUT)}


def group_data(group: int, n: int = 16):
    """One data set per group (disjoint across groups: other inputs, other target map)."""
    g = torch.Generator().manual_seed(100 + group)
    x = torch.randn(n, IN, generator=g)
    return x, x @ torch.randn(OUT, IN, generator=g).T


def loss_of(state, data):
    x, y = data
    return ((x @ (W0 + state[B] @ state[A]).T + state["item_bias"] - y) ** 2).mean()


def train(state, data, steps=3, lr=1e-3):
    """Full-batch Adam: clients with identical data and start make identical updates."""
    params = {k: t.clone().requires_grad_(True) for k, t in state.items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    total = 0.0
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of(params, data)
        loss.backward()
        opt.step()
        total += loss.item()
    return {k: t.detach() for k, t in params.items()}, total / steps


def federate(strategy, groups, rounds=3):
    """Rounds of local training + aggregation; the aggregation matrix of every round."""
    init = initial_adapter()
    strategy.set_initial(init)
    data = {g: group_data(g) for g in set(groups)}
    states = {c: dict(init) for c in range(len(groups))}
    matrices = []
    for r in range(rounds):
        trained = {c: train(states[c], data[g]) for c, g in enumerate(groups)}
        states = strategy.aggregate_round({c: t[0] for c, t in trained.items()}, {c: 10 for c in trained},
                                          {c: t[1] for c, t in trained.items()}, r, start_states=states)
        matrices.append(strategy.last_weights)
    return matrices


def group_margins(w, groups):
    """Per row: the smallest weight on a group mate minus the largest weight on the other group."""
    n = len(groups)
    return [min(w[i, j].item() for j in range(n) if j != i and groups[j] == groups[i])
            - max(w[i, j].item() for j in range(n) if groups[j] != groups[i]) for i in range(n)]


@pytest.mark.parametrize("mode", MODES)
def test_two_groups_weigh_group_mates_more_in_every_mode_but_params(mode):
    groups = [0, 0, 0, 1, 1]
    for w in federate(FellRec(similarity_on=mode), groups):
        margins = group_margins(w, groups)
        if mode == "params":
            # The release: shared A and a small B make every cosine ~1, so the rows are flat (issue 11).
            assert max(abs(m) for m in margins) < 1e-4
        else:
            assert min(margins) > 0.005


def test_drift_and_product_fade_as_aggregation_mixes_the_groups_update_does_not():
    # Each aggregate mixes the other group's adapter into a client's, so the groups' drifts (and B.A) converge
    # round after round, while each round's update still points where the client's own data pushes.
    groups = [0, 0, 0, 1, 1]
    margin = {mode: [min(group_margins(w, groups)) for w in federate(FellRec(similarity_on=mode), groups, rounds=5)]
              for mode in ("update", "drift", "product")}
    for mode in ("drift", "product"):
        assert all(later < earlier for earlier, later in zip(margin[mode], margin[mode][1:]))
    assert min(margin["update"]) > 0.07
    assert margin["update"][-1] > 5 * max(margin["drift"][-1], margin["product"][-1])


def test_centring_removes_the_shared_direction_and_sharpens_the_groups():
    # Both groups' updates share what every client learns from the common start (all cosines positive); centred,
    # only what tells the groups apart is compared, and the group mates' margin grows from ~0.08 to ~0.3.
    groups = [0, 0, 0, 1, 1]
    plain = [min(group_margins(w, groups)) for w in federate(FellRec(similarity_on="update"), groups)]
    centred = [min(group_margins(w, groups))
               for w in federate(FellRec(similarity_on="update", similarity_centred=True), groups)]
    assert all(c > 2 * p > 0 for c, p in zip(centred, plain))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("centred", [False, True])
def test_identical_clients_get_fedavg_weights_with_equal_counts(mode, centred):
    # Centred, identical updates would be zero vectors: nothing tells the clients apart, so equal weights again.
    matrices = federate(FellRec(similarity_on=mode, heating=False, similarity_centred=centred), [0, 0, 0, 0])
    fedavg = FedAvg().aggregation_weights({c: initial_adapter() for c in range(4)}, {c: 10 for c in range(4)},
                                          None, 0)
    for w in matrices:
        torch.testing.assert_close(w, fedavg, rtol=0, atol=1e-12)


# ----- the "FELLRec equals Local" anomaly of compare.md (issue 11) -------------------------------------------------
# compare.md (kmeans, 2 rounds, 48 training samples): mean best validation loss Local 2.8246, FELLRec 2.8238,
# FELLRec w/o heating 2.8223, FedAvg 2.6930, Centralized 2.4048; dirichlet: Local 2.9131, FELLRec 2.9145,
# FedAvg 2.8828. The k-means partition gave the clients 29, 1, 2, 4 and 12 of the 48 samples (dirichlet: 3, 9,
# 17, 12, 7). Cause: a client moves its adapter by about lr per AdamW step times the linear-decay factor, so by
# sum_s lr_lambda(k)(s) over its k = ceil(n / 8) steps; the table reports the UNWEIGHTED mean over clients of
# each client's loss. Early on every client's validation loss falls along the same direction (the answer format),
# so to first order mean_i L(theta_0 + d_i) = L(theta_0 + mean_i d_i): Local's mean is the loss at the mean
# displacement, and so is FELLRec's, whose ~uniform weights hand every client that mean displacement. FedAvg gives
# the 29-sample client (4 steps) weight 0.60 and so moves further. The aggregation is applied: FELLRec's spread
# over clients (0.123) is FedAvg's (0.117), not Local's (0.225).
KMEANS_SIZES = [29, 1, 2, 4, 12]
DIRICHLET_SIZES = [3, 9, 17, 12, 7]


def displacement(n: int, batch_size: int = 8) -> float:
    """Sum of the learning-rate factors of a client's round (the real schedule, warm-up 0)."""
    steps = math.ceil(n / batch_size)
    return sum(lr_lambda(steps, 0)(s) for s in range(steps))


def test_displacements_of_the_compare_partitions():
    kmeans = [displacement(n) for n in KMEANS_SIZES]
    assert kmeans == [2.5, 1.0, 1.0, 1.0, 1.5]
    assert sum(kmeans) / 5 == pytest.approx(1.4)  # Local's mean, and uniform aggregation's
    assert sum(n * d for n, d in zip(KMEANS_SIZES, kmeans)) / 48 == pytest.approx(2.03125)  # FedAvg's
    dirichlet = [displacement(n) for n in DIRICHLET_SIZES]
    assert sum(dirichlet) / 5 == pytest.approx(1.4)
    assert sum(n * d for n, d in zip(DIRICHLET_SIZES, dirichlet)) / 48 == pytest.approx(1.572917, abs=1e-6)
    # The measured gaps follow: FedAvg - Local = -0.1316 for 0.631 more displacement (k-means) and -0.0303 for
    # 0.173 (dirichlet): -0.21 and -0.18 per unit, the same slope; FELLRec - Local: -0.0008 and +0.0014.


def anomaly_states(lr=1e-3, seed=0):
    """One round of the compare run in miniature: B_i = lr * d_i * (D + E_i) from a shared A, where D is the
    direction every client's validation loss falls along and E_i a personal part that leaves that loss alone."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(RANK, IN, generator=g) / math.sqrt(IN)
    d, grad = torch.randn(OUT, RANK, generator=g), torch.randn(OUT, IN, generator=g)
    phi = lambda b: (grad * (b @ a)).sum()  # noqa: E731  (first-order gain of the validation loss)
    states = {}
    for c, n in enumerate(KMEANS_SIZES):
        e = torch.randn(OUT, RANK, generator=g)
        e = e - phi(e) / phi(d) * d  # personal: no first-order effect on the shared validation loss
        states[c] = {A: a.clone(), B: lr * displacement(n) * (d + e)}
    gain = lambda st: (phi(st[B]) / (lr * phi(d))).item()  # noqa: E731  (in units of displacement)
    return states, gain


def test_fellrec_equals_local_because_weights_are_uniform_and_the_table_is_unweighted():
    states, gain = anomaly_states()
    counts = dict(enumerate(KMEANS_SIZES))
    signals = {c: 3.0 - 0.1 * gain(st) for c, st in states.items()}  # more progress, lower training loss
    local = [gain(st) for st in Local().aggregate_round(states, counts).values()]
    fedavg = [gain(st) for st in FedAvg().aggregate_round(states, counts).values()]
    release = FellRec()  # params, as in compare.md
    fellrec = [gain(st) for st in release.aggregate_round(states, counts, signals, 0).values()]
    uniform = [gain(st) for st in FellRec(heating=False).aggregate_round(states, counts).values()]
    assert sum(local) / 5 == pytest.approx(1.4, abs=1e-6)
    assert sum(fedavg) / 5 == pytest.approx(2.03125, abs=1e-6)
    assert sum(uniform) / 5 == pytest.approx(1.4, abs=1e-4)  # = Local, to first order
    assert sum(fellrec) / 5 == pytest.approx(1.4, abs=0.05)  # heating bends the rows a little, not the mean
    assert (release.last_similarity > 0.999).all()  # shared A, tiny B: the release's cosine sees no difference
    # Every FELLRec client gets about the mean displacement; Local's clients keep their own: the spreads differ.
    assert max(uniform) - min(uniform) < 1e-3 and max(local) - min(local) == pytest.approx(1.5, abs=1e-6)
