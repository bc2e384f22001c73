"""Whose counts each client's model is built on (the score objective's prior and its log-count bias)."""

from __future__ import annotations

from fellrec.config import PartitionArgs
from tests.evaluation.conftest import catalogue  # noqa: F401  (the fixture)
from fellrec.data.partition import partition_users
from fellrec.federation.clients import client_users


def test_each_client_holds_its_own_users_and_centralized_gives_every_client_everyone(catalogue):
    partition = partition_users(catalogue, PartitionArgs(method="iid", num_clients=2))
    own = client_users(catalogue, partition)
    assert own == {c: set(partition.users_of(c)) for c in (0, 1)} and own[0].isdisjoint(own[1])
    # One centralized model ranks every client's users: all of them with the global counts (clients 1.. with no
    # counts ranked Centralized at NDCG@10 0.016 on ML-100K, a third of popularity).
    everyone = {u for u, _ in catalogue.train_pairs}
    assert client_users(catalogue, partition, centralized=True) == {0: everyone, 1: everyone}
