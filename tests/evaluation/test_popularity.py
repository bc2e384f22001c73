from fellrec.config import DataArgs
from fellrec.data.pipeline import load_data
from fellrec.evaluation.metrics import mean_metrics
from fellrec.evaluation.popularity import PopularityRanker


def test_most_popular_unseen_items_first():
    ranker = PopularityRanker([("u1", "a"), ("u2", "a"), ("u3", "a"), ("u1", "b"), ("u2", "b"), ("u1", "c")])
    assert ranker.recommend([], 2) == ["a", "b"]
    assert ranker.recommend(["a"], 3) == ["b", "c"]  # history is masked; only three items exist


def test_popularity_on_movielens_is_a_real_but_weak_floor():
    data = load_data(DataArgs())
    ranker = PopularityRanker(data.train_pairs)
    rankings = ranker.rank_samples(data.test, 20)
    assert all(not set(r) & set(s.history) for r, s in zip(rankings, data.test))
    metrics = mean_metrics(rankings, [set(s.targets) for s in data.test])
    assert 0.01 < metrics["ndcg@10"] < 0.2
    assert metrics["recall@20"] >= metrics["recall@10"] >= metrics["recall@5"]
