"""evaluate_clients and recommend on the tiny model: report shape, value ranges, own adapters, real titles."""

from __future__ import annotations

import pytest

from fellrec.data.partition import Partition
from fellrec.data.prompts import PromptStyle
from fellrec.errors import FellrecError
from fellrec.evaluation.evaluate import client_samples, evaluate_clients
from fellrec.evaluation.grounding import ItemIndex
from fellrec.evaluation.recommend import recommend
from fellrec.model.adapters import AdapterStore
from tests.evaluation.conftest import randomize_adapters

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


def test_evaluate_clients_report(setup, catalogue):
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
    assert [c["client"] for c in report["clients"]] == [0, 1] and report["skipped_clients"] == [2]
    assert sum(c["users"] for c in report["clients"]) == len(catalogue.test) == report["speed"]["users"]
    assert activated[:2] == [0, 1]  # each client generated with its own adapter
    for block in [report["overall"], report["popularity"], *report["clients"], *report["popularity_clients"]]:
        assert all(0.0 <= block[n] <= 1.0 for n in names)
    assert set(report["balance"]["ndcg@10"]) == {"std", "min", "max_minus_min", "cv"}
    assert report["balance"]["hr@10"]["min"] == min(c["hr@10"] for c in report["clients"])
    # 12 items, 3 in each history: top 10 of the other 9 holds every target, so every user is a hit at 10.
    assert report["overall"]["hr@10"] == 1.0
    # Popularity knows the 4 trained items (0, 1, 3, 5 by count); only user 0 (target 5, history 1-3) is a hit.
    assert report["popularity"]["hr@10"] == pytest.approx(1 / 6)
    assert [c["hr@10"] for c in report["popularity_clients"]] == [pytest.approx(1 / 3), 0.0]
    assert report["speed"]["users_per_second"] > 0 and report["speed"]["item_embedding_seconds"] > 0
    for client, samples in client_samples(partition, catalogue.test).items():
        for ranked, sample in zip(report["predictions"][client]["ranked"], samples):
            assert len(ranked) == 9 and not set(ranked) & set(sample.history)


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


def test_tune_pop_gamma_uses_validation_users(setup, catalogue):
    from fellrec.evaluation.evaluate import tune_pop_gamma

    model, store, tokenizer, partition, index = setup
    gamma, scores = tune_pop_gamma(model, store, tokenizer, catalogue, partition, PromptStyle(), index,
                                   grid=(0.0, 100.0), **FAST)
    assert gamma in (0.0, 100.0) and set(scores) == {0.0, 100.0}
    assert scores[gamma] == max(scores.values()) and all(0.0 <= v <= 1.0 for v in scores.values())
