"""Partitioners: k-means on MF embeddings, Dirichlet, IID; determinism and empty-client handling."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fellrec.config import PartitionArgs
from fellrec.data.partition import _kmeans, partition_users
from fellrec.data.table import RecData, Sample
from fellrec.errors import FellrecError


def _two_taste_data(genres: bool = False) -> RecData:
    """Users 0-9 only touch items a0-a9, users 10-19 only b0-b9: two obvious communities."""
    pairs, train = [], []
    for u in range(20):
        group = "a" if u < 10 else "b"
        items = [f"{group}{(u + k) % 10}" for k in range(6)]
        pairs += [(str(u), i) for i in items]
        train.append(Sample(str(u), tuple(items[:-1]), (items[-1],)))
    titles = {f"{g}{k}": f"{g.upper()} {k}" for g in "ab" for k in range(10)}
    item_genres = {i: (["Action"] if i.startswith("a") else ["Puzzle"]) for i in titles} if genres else {}
    return RecData("t", train, [], [], titles, item_genres, pairs, num_users=20, num_interactions=len(pairs))


def _sizes(partition) -> list[int]:
    return [len(partition.users_of(c)) for c in range(partition.num_clients)]


def test_iid_is_balanced_and_seeded():
    data = _two_taste_data()
    first = partition_users(data, PartitionArgs(method="iid", num_clients=3, seed=1))
    assert sorted(_sizes(first)) == [6, 7, 7]
    assert first.client_of == partition_users(data, PartitionArgs(method="iid", num_clients=3, seed=1)).client_of
    assert first.client_of != partition_users(data, PartitionArgs(method="iid", num_clients=3, seed=2)).client_of


def test_kmeans_on_mf_embeddings_finds_the_two_communities():
    data = _two_taste_data()
    partition = partition_users(data, PartitionArgs(method="kmeans", num_clients=2, mf_epochs=60, seed=0))
    clusters = {frozenset(partition.users_of(c)) for c in range(2)}
    assert clusters == {frozenset(str(u) for u in range(10)), frozenset(str(u) for u in range(10, 20))}
    again = partition_users(data, PartitionArgs(method="kmeans", num_clients=2, mf_epochs=60, seed=0))
    assert again.client_of == partition.client_of


def test_kmeans_reseeds_empty_clusters():
    # Five identical users and one other: k-means++ must pick a duplicate centroid, leaving a cluster empty.
    points = np.array([[0.0, 0.0]] * 5 + [[5.0, 5.0]])
    labels, notes = _kmeans(points, k=3, iters=10, rng=np.random.default_rng(0))
    assert sorted(Counter(labels.tolist()).values()) == [1, 1, 4]
    assert notes and "re-seeded" in notes[0]


def test_dirichlet_skews_clients_towards_groups_and_is_seeded():
    data = _two_taste_data(genres=True)
    args = PartitionArgs(method="dirichlet", num_clients=2, dirichlet_alpha=0.1, dirichlet_groups="genre", seed=3)
    partition = partition_users(data, args)
    assert partition.client_of == partition_users(data, args).client_of
    assert all(size > 0 for size in _sizes(partition))
    # With alpha 0.1 each genre's users pile up in one client: far from an even 5/5 mix.
    mix = [Counter("a" if int(u) < 10 else "b" for u in partition.users_of(c)) for c in range(2)]
    assert max(max(m.values()) / sum(m.values()) for m in mix) >= 0.8


def test_dirichlet_fills_empty_clients_and_says_so():
    data = _two_taste_data()
    args = PartitionArgs(method="dirichlet", num_clients=6, dirichlet_alpha=0.01, popularity_buckets=2, seed=0)
    partition = partition_users(data, args)
    assert all(size > 0 for size in _sizes(partition)) and sum(_sizes(partition)) == 20
    assert partition.notes and "drew no users" in partition.notes[0]


def test_dirichlet_on_genres_needs_genres():
    with pytest.raises(FellrecError, match="no item genres"):
        partition_users(_two_taste_data(), PartitionArgs(method="dirichlet", dirichlet_groups="genre"))


def test_more_clients_than_users_is_refused():
    with pytest.raises(FellrecError, match="20 users cannot fill 21 clients"):
        partition_users(_two_taste_data(), PartitionArgs(method="iid", num_clients=21))


def test_split_samples_routes_each_sample_to_its_users_client():
    data = _two_taste_data()
    partition = partition_users(data, PartitionArgs(method="iid", num_clients=4, seed=0))
    for client, samples in enumerate(partition.split_samples(data.train)):
        assert all(partition.client_of[s.user] == client for s in samples)
