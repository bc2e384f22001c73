"""Two sets of runs compared user by user: each user's NDCG@10 averaged over the seeds both sets ran, the mean
difference (A minus B) with a 95% paired-bootstrap CI (users resampled within each client, as compare.py does).

A run is a run directory (its config.yaml names the seed, its test_users.csv holds every user's NDCG@10) or a row
that compare.py saved (experiments/results/<dataset>/compare_runs/<run>.json).

    python experiments/paired_runs.py --a runs/new-s42 runs/new-s1 runs/new-s2 \\
        --b experiments/results/ml100k/compare_runs/score-kmeans-s{42,1,2}-fellrec.json
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import yaml

from compare import bootstrap, paired_values


def per_user(path: Path) -> tuple[int, dict[str, tuple[int, float]]]:
    """(the run's seed, user -> (client, NDCG@10))."""
    if path.is_file():
        row = json.loads(path.read_text())
        return row["seed"], {u["user"]: (u["client"], u["ndcg@10"]) for u in row["per_user"]}
    seed = yaml.safe_load((path / "config.yaml").read_text())["train"]["seed"]
    rows = csv.DictReader(open(path / "test_users.csv"))
    return seed, {u["user"]: (int(u["client"]), float(u["ndcg@10"])) for u in rows}


def by_user(paths: list[Path]) -> dict:
    """user -> (client, {seed: NDCG@10}), the shape compare.paired_values takes."""
    table = {}
    for path in paths:
        seed, users = per_user(path)
        for user, (client, value) in users.items():
            table.setdefault(user, (client, {}))[1][seed] = value
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, nargs="+", required=True)
    parser.add_argument("--b", type=Path, nargs="+", required=True)
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args()
    paired = paired_values(by_user(args.a), by_user(args.b))
    if paired is None:
        raise SystemExit("the two sets share no user and seed")
    clients, a, b, seeds = paired
    diff = a - b
    mean, ci = bootstrap(lambda rows: diff[rows].mean(), clients, args.bootstrap)
    print(json.dumps({"users": len(diff), "seeds": sorted(seeds), "a_ndcg@10": a.mean(), "b_ndcg@10": b.mean(),
                      "mean_diff": mean, "ci95": ci, "users_changed": int((diff != 0).sum())}))


if __name__ == "__main__":
    main()
