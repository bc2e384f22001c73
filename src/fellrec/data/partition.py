"""Grouping users into clients: k-means on MF user embeddings (the paper's way), Dirichlet non-IID, or IID.

Every partitioner orders users by id and draws from its own seeded generator, so a seed gives the same partition in
every process and run. Empty clients are repaired and reported, never silently dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fellrec.config import PartitionArgs
from fellrec.data.mf import train_bpr_user_embeddings
from fellrec.data.table import RecData, Sample, natural_key
from fellrec.errors import FellrecError


@dataclass
class Partition:
    """Which client each user belongs to."""

    client_of: dict[str, int]
    num_clients: int
    notes: list[str] = field(default_factory=list)

    def users_of(self, client: int) -> list[str]:
        return sorted((u for u, c in self.client_of.items() if c == client), key=natural_key)

    def split_samples(self, samples: list[Sample]) -> list[list[Sample]]:
        """The samples of each client, in input order."""
        per_client: list[list[Sample]] = [[] for _ in range(self.num_clients)]
        for sample in samples:
            per_client[self.client_of[sample.user]].append(sample)
        return per_client


def partition_users(data: RecData, args: PartitionArgs) -> Partition:
    users = sorted({u for u, _ in data.train_pairs} | {s.user for s in data.valid + data.test}, key=natural_key)
    if args.num_clients < 1:
        raise FellrecError(f"partition.num_clients must be at least 1, got {args.num_clients}")
    if len(users) < args.num_clients:
        raise FellrecError(f"{len(users)} users cannot fill {args.num_clients} clients (partition.num_clients)")
    rng = np.random.default_rng(args.seed)
    if args.method == "iid":
        labels, notes = _iid(len(users), args.num_clients, rng), []
    elif args.method == "kmeans":
        labels, notes = _kmeans(_user_embeddings(data, users, args), args.num_clients, args.kmeans_iters, rng)
    elif args.method == "dirichlet":
        groups = _user_groups(data, users, args)
        labels = _dirichlet(groups, args.num_clients, args.dirichlet_alpha, rng)
        labels, notes = _fill_empty_clients(labels, args.num_clients)
    else:
        raise FellrecError(f"unknown partition.method {args.method!r}: use kmeans, dirichlet or iid")
    return Partition({u: int(c) for u, c in zip(users, labels)}, args.num_clients, notes)


def _iid(num_users: int, num_clients: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.empty(num_users, dtype=np.int64)
    for client, part in enumerate(np.array_split(rng.permutation(num_users), num_clients)):
        labels[part] = client
    return labels


def _user_embeddings(data: RecData, users: list[str], args: PartitionArgs) -> np.ndarray:
    user_index = {u: i for i, u in enumerate(users)}
    items = sorted({i for _, i in data.train_pairs}, key=natural_key)
    item_index = {i: k for k, i in enumerate(items)}
    u_idx = np.array([user_index[u] for u, _ in data.train_pairs], dtype=np.int64)
    i_idx = np.array([item_index[i] for _, i in data.train_pairs], dtype=np.int64)
    return train_bpr_user_embeddings(u_idx, i_idx, len(users), max(len(items), 1), args.mf_dim, args.mf_epochs,
                                     args.seed)


def _kmeans(points: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Lloyd's algorithm from a k-means++ start; a cluster that empties is re-seeded at the worst-fit point."""
    centroids = _kmeans_plus_plus(points, k, rng)
    labels = np.full(len(points), -1)
    reseeded = 0
    for _ in range(iters):
        distances = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
        new_labels = distances.argmin(1)
        for empty in sorted(set(range(k)) - set(new_labels.tolist())):
            new_labels[_worst_fit(distances, new_labels, k)] = empty
            reseeded += 1
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        centroids = np.stack([points[labels == c].mean(0) for c in range(k)])
    notes = [f"k-means: re-seeded {reseeded} empty cluster(s) at the worst-fitting user"] if reseeded else []
    return labels, notes


def _worst_fit(distances: np.ndarray, labels: np.ndarray, k: int) -> int:
    """The user farthest from its centroid, among clusters that keep at least one other user."""
    fit = distances[np.arange(len(labels)), labels].copy()
    fit[np.bincount(labels, minlength=k)[labels] <= 1] = -1.0
    return int(fit.argmax())


def _kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centroids = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        d2 = np.min([((points - c) ** 2).sum(1) for c in centroids], axis=0)
        total = d2.sum()
        pick = rng.choice(len(points), p=d2 / total) if total > 0 else rng.integers(len(points))
        centroids.append(points[pick])
    return np.stack(centroids)


def _user_groups(data: RecData, users: list[str], args: PartitionArgs) -> list[str]:
    """Each user's dominant item group: the popularity bucket or genre most of their training items fall in."""
    if args.dirichlet_groups == "genre":
        if not data.genres:
            raise FellrecError(f"partition.dirichlet_groups=genre, but the {data.source} data has no item genres")
        group_of = {i: (sorted(g)[0] if g else "unknown") for i, g in
                    ((i, data.genres.get(i, [])) for i in data.titles)}
    else:
        group_of = _popularity_buckets(data, args.popularity_buckets)
    counts: dict[str, Counter] = {}
    for user, item in data.train_pairs:
        counts.setdefault(user, Counter())[group_of.get(item, "unknown")] += 1
    # Ties go to the group name that sorts first, so the answer never depends on insertion order.
    return [min(counts[u].items(), key=lambda kv: (-kv[1], kv[0]))[0] if u in counts else "unknown" for u in users]


def _popularity_buckets(data: RecData, buckets: int) -> dict[str, str]:
    popularity = Counter(item for _, item in data.train_pairs)
    ranked = sorted(data.titles, key=lambda i: (-popularity[i], natural_key(i)))
    return {item: f"popularity-{b}" for b, chunk in enumerate(np.array_split(np.array(ranked, dtype=object), buckets))
            for item in chunk}


def _dirichlet(groups: list[str], k: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Label-skew partition: each group's users are spread over clients in Dirichlet(alpha) proportions."""
    if alpha <= 0:
        raise FellrecError(f"partition.dirichlet_alpha must be positive, got {alpha}")
    labels = np.empty(len(groups), dtype=np.int64)
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    for group in sorted(members):
        idx = rng.permutation(np.array(members[group]))
        shares = rng.dirichlet(np.full(k, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for client, part in enumerate(np.split(idx, cuts)):
            labels[part] = client
    return labels


def _fill_empty_clients(labels: np.ndarray, k: int) -> tuple[np.ndarray, list[str]]:
    """Give every empty client one user taken from the largest client (the last of its users, by id order)."""
    labels = labels.copy()
    moved = 0
    for client in range(k):
        if not (labels == client).any():
            largest = int(np.bincount(labels, minlength=k).argmax())
            labels[np.flatnonzero(labels == largest)[-1]] = client
            moved += 1
    notes = [f"{moved} client(s) drew no users; each got one user from the largest client"] if moved else []
    return labels, notes
