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

import yaml

from compare import bootstrap, paired_values, per_user_table


def run_row(path: Path, side: str) -> dict:
    """One run as a compare.py row of method `side`: its seed and every user's (client, NDCG@10)."""
    if path.is_file():
        row = json.loads(path.read_text())
    else:
        seed = yaml.safe_load((path / "config.yaml").read_text())["train"]["seed"]
        with open(path / "test_users.csv") as f:
            row = {"seed": seed, "per_user": list(csv.DictReader(f))}
    return {**row, "method": side, "partition": "-", "objective": "score"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, nargs="+", required=True)
    parser.add_argument("--b", type=Path, nargs="+", required=True)
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args()
    rows = [run_row(path, side) for side in ("a", "b") for path in getattr(args, side)]
    paired = paired_values(per_user_table(rows, "a", "-"), per_user_table(rows, "b", "-"))
    if paired is None:
        raise SystemExit("the two sets share no user and seed")
    clients, a, b, seeds = paired
    diff = a - b
    mean, ci = bootstrap(lambda users: diff[users].mean(), clients, args.bootstrap)
    print(json.dumps({"users": len(diff), "seeds": sorted(seeds), "a_ndcg@10": a.mean(), "b_ndcg@10": b.mean(),
                      "mean_diff": mean, "ci95": ci, "users_changed": int((diff != 0).sum())}))


if __name__ == "__main__":
    main()
