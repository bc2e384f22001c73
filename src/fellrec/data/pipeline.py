"""The data stage: source -> interactions -> split -> (sampled) prompts -> per-client datasets."""

from __future__ import annotations

import random

from fellrec.config import DataArgs
from fellrec.data.bigrec import read_bigrec_json
from fellrec.data.sources import read_amazon2018, read_csv, read_movielens100k
from fellrec.data.splits import global_time, leave_one_out
from fellrec.data.table import RecData, Sample
from fellrec.errors import FellrecError

_READERS = {"movielens100k": read_movielens100k, "csv": read_csv, "amazon2018": read_amazon2018}


def load_data(args: DataArgs) -> RecData:
    """Read, split and sample the configured source."""
    if args.max_history < 1:
        raise FellrecError(f"data.max_history must be at least 1, got {args.max_history}")
    if args.source == "bigrec_json":
        data = read_bigrec_json(args)
    elif args.source in _READERS:
        table = _READERS[args.source](args)
        if resolved_split(args) == "leave_one_out":
            data = leave_one_out(table, args.source, args.max_history)
        else:
            data = global_time(table, args.source, args.max_history, tuple(args.split_ratios))
    else:
        raise FellrecError(f"unknown data.source {args.source!r}: use one of {sorted([*_READERS, 'bigrec_json'])}")
    if not data.train:
        raise FellrecError(f"the {args.source} data yields no training samples")
    data.train = sample_subset(data.train, args.train_samples, args.seed, "data.train_samples", data.notes)
    data.valid = sample_subset(data.valid, args.valid_samples, args.seed + 1, "data.valid_samples", data.notes)
    data.test = sample_subset(data.test, args.test_users, args.seed + 2, "data.test_users", data.notes)
    return data


def resolved_split(args: DataArgs) -> str:
    """The split in force: the configured one, else the source's usual one."""
    if args.source == "bigrec_json":
        return "given"
    return args.split or ("global_time" if args.source == "amazon2018" else "leave_one_out")


def sample_subset(samples: list[Sample], n: int | None, seed: int, key: str,
                  notes: list[str] | None = None) -> list[Sample]:
    """`n` samples drawn without replacement (kept in their original order), or all of them when n is None."""
    if n is None or n >= len(samples):
        if n is not None and notes is not None:
            notes.append(f"{key}={n} asks for more than the {len(samples)} available: all are kept")
        return samples
    if n < 1:
        raise FellrecError(f"{key} must be at least 1 (or null for all), got {n}")
    keep = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in keep]
