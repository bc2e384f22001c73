"""evaluate_clients, tune_pop_gamma and recommend: known answers with scripted generation on items placed on a line,
and the tiny model writing for real (own adapters, history masked, metrics of the reported rankings, real titles)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fellrec.data.partition import Partition
from fellrec.data.prompts import PromptStyle
from fellrec.data.table import Sample
from fellrec.errors import FellrecError
from fellrec.evaluation import evaluate as evaluate_module
from fellrec.evaluation.evaluate import client_samples, evaluate_clients, tune_pop_gamma
from fellrec.evaluation.grounding import ItemIndex
from fellrec.evaluation.recommend import recommend
from fellrec.model.adapters import AdapterStore
from tests.evaluation.conftest import TITLES, randomize_adapters

KS = (5, 10)
FAST = dict(num_beams=2, max_new_tokens=5, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def setup(tiny, catalogue):
    """Three clients (the last has no test user), each with its own random adapter."""
    model, tokenizer = tiny
    store = AdapterStore(model)
    for client in range(3):
        randomize_adapters(model, seed=client)
        store.capture(client)
    partition = Partition({"0": 0, "1": 0, "2": 0, "3": 1, "4": 1, "5": 1}, num_clients=3)
    index = ItemIndex.build(model, tokenizer, catalogue.titles)
    yield model, store, tokenizer, partition, index
    randomize_adapters(model, seed=0, scale=0.0)


# ----- known answers: scripted generation, items on a line ----------------------------------------------------------
# Item i sits at x = i on a line, so a generated title's nearest items are known by hand: from x = g the order is
# g, then g - 1 / g + 1 (lower id first on ties), and so on, history items skipped.
LINE = torch.tensor([[float(i), 0.0] for i in range(12)])


def line_index(build_seconds: float = 0.25) -> ItemIndex:
    return ItemIndex([str(i) for i in range(12)], [TITLES[str(i)] for i in range(12)], LINE.clone(), build_seconds)


@pytest.fixture
def scripted(monkeypatch, setup):
    """Replace the model's writing by a script: `script(client, history) -> item id` says which item's title the
    active client's adapter writes for a prompt; that title embeds at the item's point on the line."""
    _, store, _, _, _ = setup
    by_title = {TITLES[str(i)]: i for i in range(12)}
    by_prompt = {}
    style = PromptStyle()
    calls = []

    def use(script, samples):
        for sample in samples:
            by_prompt[style.prompt([TITLES[i] for i in sample.history])] = tuple(sample.history)

        def generate(model, tokenizer, prompts, *args, **kwargs):
            calls.append((store.active, len(prompts)))
            return [TITLES[script(store.active, by_prompt[p])] for p in prompts]

        def embed(model, tokenizer, texts, *args, **kwargs):
            return torch.stack([LINE[by_title[t]] for t in texts])

        monkeypatch.setattr(evaluate_module, "generate_titles", generate)
        monkeypatch.setattr(evaluate_module, "embed_texts", embed)
        return calls

    return use


def test_evaluate_clients_known_answers(setup, catalogue, scripted):
    """Each test user u has history (u+1, u+2, u+3) and target u+5. Client 0 has users 0-3 and writes each target's
    title: rank 1. Client 1 has users 4 and 5 and writes items 0 and 11:
      user 4 (history 5 6 7, target 9):  from x = 0  -> 0 1 2 3 4 8 9 10 11  target at rank 7
      user 5 (history 6 7 8, target 10): from x = 11 -> 11 10 9 5 4 3 2 1 0  target at rank 2
    Client 2 has no user. The overall figures weigh client 0 by 4 users and client 1 by 2."""
    model, store, tokenizer, _, _ = setup
    partition = Partition({"0": 0, "1": 0, "2": 0, "3": 0, "4": 1, "5": 1}, num_clients=3)
    writes = {1: {("5", "6", "7"): "0", ("6", "7", "8"): "11"}}

    def script(client, history):
        if client == 0:
            return str((int(history[0]) - 1 + 5) % 12)  # user u = history[0] - 1 writes its target u + 5
        return writes[client][history]

    calls = scripted(script, catalogue.test)
    store.activate(2)
    report = evaluate_clients(model, store, tokenizer, catalogue, partition, style=PromptStyle(), ks=KS,
                              item_index=line_index(), keep_predictions=True, **FAST)
    assert store.active == 2  # the live adapter is left as it was found
    assert [c for c, _ in calls] == [0, 1]  # each client's users were written by that client's own adapter

    assert report["predictions"][0]["ranked"][0][:3] == ["5", "4", "6"]  # user 0: target 5 first, then 4 and 6
    assert report["predictions"][1]["ranked"] == [["0", "1", "2", "3", "4", "8", "9", "10", "11"],
                                                  ["11", "10", "9", "5", "4", "3", "2", "1", "0"]]
    assert [(c["client"], c["users"]) for c in report["clients"]] == [(0, 4), (1, 2)]
    assert report["skipped_clients"] == [2]

    perfect = {"recall@5": 1.0, "ndcg@5": 1.0, "hr@5": 1.0, "mrr@5": 1.0, "precision@5": 0.2,
               "recall@10": 1.0, "ndcg@10": 1.0, "hr@10": 1.0, "mrr@10": 1.0, "precision@10": 0.1}
    r2, r7 = 1 / math.log2(3), 1 / math.log2(8)  # DCG of a hit at rank 2, at rank 7 (= 1/3)
    client1 = {"recall@5": 1 / 2, "ndcg@5": r2 / 2, "hr@5": 1 / 2, "mrr@5": (0 + 1 / 2) / 2, "precision@5": 0.2 / 2,
               "recall@10": 1.0, "ndcg@10": (r7 + r2) / 2, "hr@10": 1.0, "mrr@10": (1 / 7 + 1 / 2) / 2,
               "precision@10": 0.1}
    c0, c1 = ({k: v for k, v in c.items() if "@" in k} for c in report["clients"])
    assert c0 == pytest.approx(perfect, abs=1e-12)
    assert c1 == pytest.approx(client1, abs=1e-12)
    assert report["overall"] == pytest.approx({k: (4 * perfect[k] + 2 * client1[k]) / 6 for k in perfect}, abs=1e-12)
    # Balance across the two clients (unweighted): population std of two values = half their gap.
    lo = client1["ndcg@10"]
    assert report["balance"]["ndcg@10"] == pytest.approx(
        {"std": (1 - lo) / 2, "min": lo, "max_minus_min": 1 - lo, "cv": ((1 - lo) / 2) / ((1 + lo) / 2)}, abs=1e-12)
    # Popularity knows the 4 trained items (0, 1, 3, 5 by count); only user 0 (target 5, history 1-3) is a hit,
    # at rank 2 behind item 0: hr@10 1/4 in client 0, 0 in client 1, 1/6 overall; ndcg@5 (1 / log2 3) / 6.
    assert [c["hr@10"] for c in report["popularity_clients"]] == [pytest.approx(1 / 4), 0.0]
    assert report["popularity"]["hr@10"] == pytest.approx(1 / 6)
    assert report["popularity"]["ndcg@5"] == pytest.approx(r2 / 6)
    speed = report["speed"]
    assert speed["users"] == 6 and speed["users_per_second"] == pytest.approx(6 / speed["seconds"], rel=1e-12)
    assert speed["item_embedding_seconds"] == 0.25 and speed["item_index_cached"] is False


def test_history_mask_hides_training_and_validation_items_from_model_and_popularity(setup, catalogue, scripted):
    """eval.mask history: user 4 (prompt 5 6 7, trained on 0, validation target 7, test target 9) writes item 0;
    from x = 0 the order is 0 1 2 3 4 5 6 7 8 9, with 0 5 6 7 masked -> 1 2 3 4 8 9: target at rank 6 (rank 7
    under the prompt mask, which leaves 0 in). Popularity (0: 6 users, 1: 2, then 3 and 5: 1 each) for user 0
    (prompt 1 2 3, trained on 0 1, target 5): the prompt mask gives 0 5 (target at rank 2), the history mask 5
    (rank 1)."""
    model, store, tokenizer, _, _ = setup
    partition = Partition({"0": 0, "1": 0, "2": 0, "3": 0, "4": 1, "5": 1}, num_clients=3)
    writes = {("5", "6", "7"): "0", ("6", "7", "8"): "11"}
    scripted(lambda client, history: writes.get(history, "11"), catalogue.test)
    reports = {mask: evaluate_clients(model, store, tokenizer, catalogue, partition, style=PromptStyle(), ks=KS,
                                      item_index=line_index(), keep_predictions=True, mask=mask, **FAST)
               for mask in ("prompt", "history")}
    assert [r["protocol"] for r in reports.values()] == ["prompt", "history"]
    assert reports["history"]["predictions"][1]["ranked"][0] == ["1", "2", "3", "4", "8", "9", "10", "11"]
    assert reports["prompt"]["predictions"][1]["ranked"][0][:7] == ["0", "1", "2", "3", "4", "8", "9"]
    r2 = 1 / math.log2(3)
    assert reports["prompt"]["popularity_clients"][0]["ndcg@5"] == pytest.approx(r2 / 4, abs=1e-12)
    assert reports["history"]["popularity_clients"][0]["ndcg@5"] == pytest.approx(1 / 4, abs=1e-12)
    with pytest.raises(FellrecError, match="eval.mask"):
        evaluate_clients(model, store, tokenizer, catalogue, partition, style=PromptStyle(), ks=KS,
                         item_index=line_index(), mask="everything", **FAST)


def test_evaluate_clients_report_on_the_real_model(setup, catalogue):
    """The tiny model writes for real: each client with its own adapter, rankings that skip the history, and metrics
    that are those of the reported rankings."""
    model, store, tokenizer, partition, index = setup
    activated = []
    real_activate = store.activate
    store.activate = lambda c: activated.append(c) or real_activate(c)
    try:
        report = evaluate_clients(model, store, tokenizer, catalogue, partition, style=PromptStyle(), ks=KS,
                                  item_index=index, keep_predictions=True, **FAST)
    finally:
        del store.activate
    names = {f"{m}@{k}" for m in ("recall", "ndcg", "hr", "mrr", "precision") for k in KS}
    assert {"overall", "clients", "balance", "popularity", "popularity_clients", "speed"} <= set(report)
    assert set(report["overall"]) == names and set(report["balance"]) == names and set(report["popularity"]) == names
    assert activated[:2] == [0, 1]  # each client generated with its own adapter
    per_client = client_samples(partition, catalogue.test)
    for client, row in zip(per_client, report["clients"]):
        ranked = report["predictions"][client]["ranked"]
        samples = per_client[client]
        for r, sample in zip(ranked, samples):
            assert len(r) == 9 and not set(r) & set(sample.history)  # 12 items, 3 in the history
        # Recall@5 and MRR@10 of the reported rankings, by hand (one target per user).
        assert row["recall@5"] == pytest.approx(sum(s.targets[0] in r[:5] for r, s in zip(ranked, samples)) / 3)
        assert row["mrr@10"] == pytest.approx(sum(1 / (r.index(s.targets[0]) + 1) for r, s in zip(ranked, samples))
                                              / 3)


def test_evaluate_clients_popularity_and_constrained(setup, catalogue):
    model, store, tokenizer, partition, index = setup
    samples = {1: catalogue.test[3:5]}
    report = evaluate_clients(model, store, tokenizer, catalogue, samples_per_client=samples, ks=KS,
                              item_index=index, pop_gamma=100.0, grounding="constrained", keep_predictions=True,
                              **FAST)
    assert set(report["predictions"][1]["generated"]) <= set(catalogue.titles.values())
    assert [c["users"] for c in report["clients"]] == [2] and report["pop_gamma"] == 100.0
    with pytest.raises(FellrecError, match="grounding"):
        evaluate_clients(model, store, tokenizer, catalogue, samples_per_client=samples, item_index=index,
                         grounding="nearest", **FAST)


def test_recommend(setup, catalogue):
    model, store, tokenizer, _, index = setup
    history = ["Heat (1995)", "toy story (1995)"]  # case-insensitive match of a catalogue title
    top = recommend(model, store, tokenizer, index, 1, history, top_k=5, style=PromptStyle(), **{
        k: FAST[k] for k in ("num_beams", "max_new_tokens")})
    titles = [t for t, _ in top]
    assert len(titles) == 5 == len(set(titles)) and set(titles) <= set(catalogue.titles.values())
    assert not {"Heat (1995)", "Toy Story (1995)"} & set(titles)
    assert [s for _, s in top] == sorted(s for _, s in top)
    with pytest.raises(FellrecError, match=r"'Heet \(1995\)'.*'Heat \(1995\)'"):
        recommend(model, store, tokenizer, index, 1, ["Heet (1995)"], top_k=3, style=PromptStyle())


# ----- pop_gamma chosen on validation users where the right answer is obvious ----------------------------------------
# Training popularity of catalogue(): item 0 x6, item 1 x2, items 3 and 5 x1 -> min-max p = 1, 1/3, 1/6, 1/6, else 0.
def valid_data(catalogue, history, target):
    users = [str(u) for u in range(6)]
    return dataclasses.replace(catalogue, valid=[Sample(u, history, (target,)) for u in users])


def test_tune_pop_gamma_picks_a_large_gamma_when_targets_are_popular(setup, catalogue, scripted):
    """Every validation user has history (10, 11), target item 0 (the most popular), and writes item 11's title.
    Normalised distances from x = 11 are (11 - j) / 11, item 0 the farthest:
      gamma 0:   9 8 7 ... 1 0            item 0 at rank 10: NDCG@10 = 1 / log2(11)
      gamma 1:   scores 9 .18, 8 .27, 7 .36, 6 .45, 5 (6/11)(6/7) = .47, 0 1 * 1/2 = .50, ...: rank 6: 1 / log2(7)
      gamma 100: item 0's factor 2^-100 puts it first: NDCG 1
    so 100 must win (it is last in the grid: no tie rule can pick it)."""
    model, store, tokenizer, partition, _ = setup
    data = valid_data(catalogue, ("10", "11"), "0")
    calls = scripted(lambda client, history: "11", data.valid)
    gamma, scores = tune_pop_gamma(model, store, tokenizer, data, partition, PromptStyle(), line_index(),
                                   grid=(0.0, 1.0, 100.0), **FAST)
    assert gamma == 100.0
    assert scores == pytest.approx({0.0: 1 / math.log2(11), 1.0: 1 / math.log2(7), 100.0: 1.0}, abs=1e-12)
    assert [c for c, _ in calls] == [0, 1]


def test_tune_pop_gamma_picks_zero_when_the_nearest_item_is_the_target(setup, catalogue, scripted):
    """History (6, 7), target item 8 (never trained on), the title written is item 7's. Without popularity item 8
    (distance 1) is first: NDCG 1. With gamma 100 the trained items 0, 1, 5, 3 go first (factors 2^-100,
    (4/3)^-100, (7/6)^-100 times their distances): item 8 at rank 5, NDCG 1 / log2(6). Gamma 0 must win (last in
    the grid)."""
    model, store, tokenizer, partition, _ = setup
    data = valid_data(catalogue, ("6", "7"), "8")
    scripted(lambda client, history: "7", data.valid)
    gamma, scores = tune_pop_gamma(model, store, tokenizer, data, partition, PromptStyle(), line_index(),
                                   grid=(100.0, 0.0), **FAST)
    assert gamma == 0.0
    assert scores == pytest.approx({100.0: 1 / math.log2(6), 0.0: 1.0}, abs=1e-12)


def test_tune_pop_gamma_uses_the_validation_users_not_the_test_users(setup, catalogue, scripted):
    """Validation targets are popular (gamma 100 wins), the test targets are not: choosing on the test users would
    pick 0."""
    model, store, tokenizer, partition, _ = setup
    data = valid_data(catalogue, ("10", "11"), "0")
    data = dataclasses.replace(data, test=[Sample(s.user, ("6", "7"), ("8",)) for s in data.valid])
    scripted(lambda client, history: history[-1], data.valid + data.test)
    gamma, _ = tune_pop_gamma(model, store, tokenizer, data, partition, PromptStyle(), line_index(),
                              grid=(0.0, 100.0), **FAST)
    assert gamma == 100.0
