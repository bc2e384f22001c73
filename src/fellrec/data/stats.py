"""Summaries of the data stage, as a dict (for JSON and tests) and as a console table."""

from __future__ import annotations

import hashlib

from fellrec.data.partition import Partition
from fellrec.data.table import RecData


def data_stats(data: RecData, partition: Partition, split: str) -> dict:
    per_split = {name: partition.split_samples(samples)
                 for name, samples in (("train", data.train), ("valid", data.valid), ("test", data.test))}
    clients = [{"client": c, "users": len(partition.users_of(c)),
                **{f"{name}_samples": len(per_split[name][c]) for name in per_split}}
               for c in range(partition.num_clients)]
    return {
        "source": data.source,
        "users": data.num_users,
        "items": data.num_items,
        "interactions": data.num_interactions,
        "split": split,
        "train_interactions": len(data.train_pairs),
        "train_samples": len(data.train),
        "valid_samples": len(data.valid),
        "test_samples": len(data.test),
        "test_targets": sum(len(s.targets) for s in data.test),
        "partition_fingerprint": partition_fingerprint(partition),
        "clients": clients,
        "notes": data.notes + partition.notes,
    }


def partition_fingerprint(partition: Partition) -> str:
    """A short hash of who is in which client: equal fingerprints mean the same partition."""
    lines = "".join(f"{user}\t{partition.client_of[user]}\n" for c in range(partition.num_clients)
                    for user in partition.users_of(c))
    return hashlib.sha256(lines.encode()).hexdigest()[:12]


def format_stats(stats: dict, method: str) -> str:
    lines = [
        f"source        {stats['source']}",
        f"users         {stats['users']}",
        f"items         {stats['items']}",
        f"interactions  {stats['interactions']}",
        f"split         {stats['split']}: train {stats['train_samples']} samples "
        f"(from {stats['train_interactions']} interactions), valid {stats['valid_samples']}, "
        f"test {stats['test_samples']} ({stats['test_targets']} targets)",
        f"clients       {len(stats['clients'])} ({method}, partition {stats['partition_fingerprint']})",
        f"{'client':>8} {'users':>7} {'train':>7} {'valid':>7} {'test':>7}",
    ]
    lines += [f"{c['client']:>8} {c['users']:>7} {c['train_samples']:>7} {c['valid_samples']:>7} "
              f"{c['test_samples']:>7}" for c in stats["clients"]]
    lines += [f"note: {n}" for n in stats["notes"]]
    return "\n".join(lines)
