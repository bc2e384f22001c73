"""The scoring objective on a tiny split model: encoding, loss, ranking masks, the head as client-side state, and what
the server sees."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch

from fellrec.config import DataArgs, EvalArgs, ModelArgs, SplitArgs, TrainArgs
from fellrec.data.partition import Partition
from fellrec.data.score_samples import ScoreEncoder, collate_scores
from fellrec.data.table import RecData, Sample
from fellrec.evaluation.grounding import ItemIndex
from fellrec.federation.strategies import build_strategy
from fellrec.model.adapters import AdapterStore
from fellrec.model.loading import load_tokenizer
from fellrec.model.split import SplitModel
from fellrec.objectives import ScoreObjective
from tests.model.server_probe import ServerProbe, boundary_ints

N_ITEMS = 41  # differs from every batch, sequence, hidden and head size here, so the probe's size rule can flag it
TITLES = {str(i): f"Movie {i} ({1950 + i})" for i in range(N_ITEMS)}
HEAD = "score_head."


def catalogue() -> RecData:
    """Users 0-5. User 0: trained on items 0 and 1, validation target 3, test prompt 1 2 3 with target 5."""
    train_pairs = [(str(u), "0") for u in range(6)] + [("0", "1"), ("1", "1"), ("2", "3"), ("3", "5")]
    test = [Sample(str(u), (str(u + 1), str(u + 2), str(u + 3)), (str(u + 5),)) for u in range(6)]
    valid = [Sample(str(u), (str(u + 1), str(u + 2)), (str(u + 3),)) for u in range(6)]
    train = [Sample(str(u), tuple(str(u + j) for j in range(1, 5)), (str(u + 6),)) for u in range(6)]
    return RecData("hand", train, valid, test, dict(TITLES), {}, train_pairs, num_users=6, num_interactions=40)


def config(**model) -> SimpleNamespace:
    return SimpleNamespace(data=DataArgs(prompt="compact"), train=TrainArgs(lr=1e-2, item_lr=1e-2),
                           eval=EvalArgs(batch_size=4),
                           model=ModelArgs(name="tiny-llama", quantize="none", objective="score", **model))


def build(**model):
    """(objective, store, data) over a fresh tiny model (the head changes the model's trainable tensors)."""
    cfg, data = config(**model), catalogue()
    torch.manual_seed(0)
    split = SplitModel(cfg.model, SplitArgs(head_layers=1, tail_layers=1), device="cpu")
    tokenizer = load_tokenizer(cfg.model)
    index = ItemIndex.build(split, tokenizer, data.titles)
    objective = ScoreObjective(cfg, split, tokenizer, data, lambda: index, contextlib.nullcontext)
    objective.store = store = AdapterStore(split)
    return objective, store, data


@pytest.fixture(scope="module")
def built():
    return build(score_targets="all")


def test_the_encoder_reads_the_end_of_every_title_and_of_the_prompt(built):
    objective, _, data = built
    sample = data.train[0]  # history 1 2 3 4, target 6
    encoded = objective.encoder.encode(sample)
    tokenizer = objective.tokenizer
    ends = [tokenizer.decode(encoded.input_ids[:p + 1]) for p in encoded.positions]
    assert ends == ["Movies watched: Movie 1 (1951);", "Movies watched: Movie 1 (1951); Movie 2 (1952);",
                    "Movies watched: Movie 1 (1951); Movie 2 (1952); Movie 3 (1953);",
                    "Movies watched: Movie 1 (1951); Movie 2 (1952); Movie 3 (1953); Movie 4 (1954);"]
    assert len(encoded.input_ids) == encoded.positions[-1] + 1  # read at the last title's end: no suffix
    assert encoded.targets == [2, 3, 4, 6]  # each title predicts the next; the prompt's end predicts the target
    last = ScoreEncoder(tokenizer, objective.style, data.titles, objective.index.row, 512, "last").encode(sample)
    assert last.positions == [len(last.input_ids) - 1] and last.targets == [6]
    short = ScoreEncoder(tokenizer, objective.style, data.titles, objective.index.row, 12, "all").encode(sample)
    assert short.truncated and len(short.input_ids) == 12 and short.targets[-1] == 6
    assert all(0 <= p < 12 for p in short.positions) and len(short.positions) < 4


def test_collate_shifts_positions_by_the_left_padding(built):
    objective, _, data = built
    encoded = objective.encode([data.train[0], Sample("x", ("1",), ("2",))])
    batch = collate_scores(encoded, pad_token_id=2)
    width = batch["input_ids"].shape[1]
    assert batch["positions"][1, 0] == width - 1 and batch["targets"][1].tolist() == [2, -100, -100, -100]
    assert batch["positions"][0, -1] == width - 1 and batch["targets"][0].tolist() == [2, 3, 4, 6]


def test_the_score_loss_falls_on_a_fixed_batch():
    objective, store, data = build(score_targets="all", score_scale=8.0)  # room for the cosine to say something
    sides = store.activate(0).train()
    batch = objective.collate(objective.encode(data.train))
    groups = objective.param_groups(store.live, objective.cfg.train)
    assert [len(g["params"]) for g in groups] == [len(store.live) - 3, 3]  # the head's 3 tensors get item_lr
    optimizer = torch.optim.AdamW(groups)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = objective.loss(sides, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(N_ITEMS), abs=1.0)  # near-uniform over 41 items at the start
    assert losses[-1] < 0.5 * losses[0]


def test_ranking_masks_the_prompt_or_the_whole_history():
    """The bias alone orders the items 0 > 1 > ... > 40 (the cosine scaled to nothing). User 0 (prompt 1 2 3,
    trained on 0 and 1, validation target 3, test target 5): the prompt mask leaves 0 4 5 -> target at rank 3, the
    history mask leaves 4 5 -> rank 2; popularity (0, then 1, then 3 and 5) puts it at rank 2 and 1."""
    objective, store, data = build()
    state = dict(store.state(0))
    state[HEAD + "bias"] = -torch.arange(N_ITEMS, dtype=torch.float32)
    state[HEAD + "log_scale"] = torch.tensor(-30.0)
    store.set_state(0, state)
    users = {0: [data.test[0]]}
    reports = {mask: objective.evaluate(users, mask, progress=False, ks=(5,)) for mask in ("prompt", "history")}
    assert reports["prompt"]["overall"]["ndcg@5"] == pytest.approx(1 / math.log2(4))
    assert reports["history"]["overall"]["ndcg@5"] == pytest.approx(1 / math.log2(3))
    assert reports["prompt"]["popularity"]["ndcg@5"] == pytest.approx(1 / math.log2(3))
    assert reports["history"]["popularity"]["ndcg@5"] == pytest.approx(1.0)
    assert reports["history"]["protocol"] == "history" and reports["history"]["objective"] == "score"
    # Ranking went through the split: one prompt of T tokens sent h_k (fp32), the int64 mask and positions up, and
    # received T hidden states back.
    tokens, hidden = len(objective.encoder.encode(data.test[0]).input_ids), objective.model.config.hidden_size
    assert reports["history"]["speed"]["boundary_bytes_up"] == tokens * hidden * 4 + 2 * tokens * 8
    assert reports["history"]["speed"]["boundary_bytes_down"] == tokens * hidden * 4


def test_log_count_bias_starts_each_client_at_its_own_popularity():
    objective, store, data = build(score_bias="log_count")
    objective.init_clients(store, {0: {"0", "1"}, 1: {"2", "3"}})
    bias0, bias1 = store.state(0)[HEAD + "bias"], store.state(1)[HEAD + "bias"]
    assert bias0[:6].tolist() == pytest.approx([math.log(3), math.log(3), 0, 0, 0, 0])  # 0: users 0, 1; 1: users 0, 1
    assert bias1[:6].tolist() == pytest.approx([math.log(3), 0, 0, math.log(2), 0, math.log(2)])
    assert HEAD + "bias" in store.client_state(0) and HEAD + "items" not in store.server_state(0)


def test_client_prior_stays_with_its_client_through_aggregation_and_ranks_by_its_own_counts():
    """Client 0 holds users 0 and 1 (items 0 and 1 counted twice), client 1 users 2 and 3 (item 0 twice, 3 and 5
    once). With the cosine scaled to nothing and FedAvg mixing the learnt biases (all zero), each client still ranks
    by its own counts: user 0's test target 5 (items 0-3 masked as history) is client 1's top item, while for
    client 0 it is one of 37 items with count 0."""
    objective, store, data = build(score_bias="client_prior")
    objective.init_clients(store, {0: {"0", "1"}, 1: {"2", "3"}})
    assert torch.count_nonzero(store.state(0)[HEAD + "bias"]) == 0  # the learnt part starts at zero
    assert objective.priors[1][:6].tolist() == pytest.approx([math.log(3), 0, 0, math.log(2), 0, math.log(2)])
    for c in (0, 1):
        state = dict(store.state(c))
        state[HEAD + "log_scale"] = torch.tensor(-30.0)
        store.set_state(c, state)
    new = build_strategy("fedavg").aggregate_round({c: store.state(c) for c in (0, 1)}, {0: 1, 1: 1},
                                                   {0: 0.0, 1: 0.0}, 0, [0, 1])
    for c in (0, 1):
        store.set_state(c, new[c])
        assert not any(torch.equal(t, objective.priors[c]) for t in new[c].values())  # never uploaded
    report = objective.evaluate({0: [data.test[0]], 1: [data.test[0]]}, "history", progress=False, ks=(5, 10))
    ndcg = {row["client"]: row["ndcg@5"] for row in report["clients"]}
    assert ndcg[1] == 1.0 and ndcg[0] < 1.0
    assert [(r["user"], r["client"], r["ndcg@10"]) for r in report["per_user"]][1] == ("0", 1, 1.0)
    assert objective.evaluate({1: [data.test[0]]}, "history", progress=False)["client_popularity"]["ndcg@10"] == 1.0


def test_the_head_is_aggregated_and_round_trips_bitwise_through_save_and_load(tmp_path):
    objective, store, _ = build()
    g = torch.Generator().manual_seed(1)
    for c in (0, 1):
        store.set_state(c, {n: torch.randn(t.shape, generator=g) for n, t in store.state(c).items()})
    saved = {n: t.clone() for n, t in store.state(0).items()}
    store.save(0, tmp_path / "c0")
    store.set_state(0, store.state(1))
    store.load(0, tmp_path / "c0")
    assert all(torch.equal(store.state(0)[n], saved[n]) for n in saved)
    fedavg = build_strategy("fedavg")
    new = fedavg.aggregate_round({c: store.state(c) for c in (0, 1)}, {0: 1, 1: 3}, {0: 0.0, 1: 0.0}, 0, [0, 1])
    expected = 0.25 * store.state(0)[HEAD + "items"] + 0.75 * store.state(1)[HEAD + "items"]
    assert torch.allclose(new[0][HEAD + "items"], expected)
    assert torch.equal(new[0][HEAD + "bias"], new[1][HEAD + "bias"])
    store.export(0, tmp_path / "export")
    assert (tmp_path / "export" / "score_head.safetensors").is_file()
    store.load(1, tmp_path / "export")
    assert all(torch.equal(store.state(1)[n], saved[n]) for n in saved)


def test_the_server_never_sees_item_ids_the_table_or_scores(built):
    objective, store, data = built
    sides = store.activate(0).train()
    batch = objective.collate(objective.encode(data.train))
    with ServerProbe(sides.server) as probe:
        objective.loss(sides, batch).backward()
        scores = objective.score_samples(sides, data.test, batch_size=4)
    secrets = {"input_ids": batch["input_ids"], "targets": batch["targets"], "positions": batch["positions"],
               "items": objective.head.items.detach(), "bias": objective.head.bias.detach(), "scores": scores}
    allowed = boundary_ints(batch)
    encoded = sorted(objective.encode(data.test), key=lambda e: len(e.input_ids))  # as score_samples batches them
    for start in range(0, len(encoded), 4):
        allowed += boundary_ints(objective.collate(encoded[start:start + 4]))
    leaks = probe.leaks(secrets=secrets, forbidden_sizes={"items": N_ITEMS}, allowed_ints=allowed)
    assert not leaks, leaks
    assert probe.calls["ServerModule.forward"] == 1 + math.ceil(len(data.test) / 4)
    assert probe.calls["ServerModule.backward"] == 1
