"""What int8 server blocks change in a trained run's ranking: the run's best adapters rank every test user twice, with
the dense blocks the run trained with and after swapping them to int8 (`eval.quantize: int8`), and the per-user
NDCG@10 difference gets a paired-bootstrap 95% CI; ranking speed of both passes beside it.

    python experiments/int8_rerank.py runs/compare/ml100k/full/score-kmeans-s42-fellrec
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml

from fellrec.cli import SECTIONS
from fellrec.evaluation.checkpoint_eval import _load
from fellrec.evaluation.evaluate import client_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a score-objective run directory with config.yaml and best/")
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args()
    raw = yaml.safe_load((args.run / "config.yaml").read_text())
    cfg = SimpleNamespace(**{name: cls(**(raw.get(name) or {})) for name, cls in SECTIONS.items()})
    data, partition, objective = _load(cfg, args.run / "best")
    samples = client_samples(partition, data.test)
    results = {"dense": objective.evaluate(samples, cfg.eval.mask, progress=False)}
    objective.model.rank_in_int8()
    results["int8"] = objective.evaluate(samples, cfg.eval.mask, progress=False)
    dense, int8 = (np.array([u["ndcg@10"] for u in results[k]["per_user"]]) for k in ("dense", "int8"))
    diff = int8 - dense
    rng = np.random.default_rng(0)
    boot = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(args.bootstrap)]
    print(json.dumps({
        "users": len(diff), "users_changed": int((diff != 0).sum()), "mean_diff": float(diff.mean()),
        "ci95": [float(v) for v in np.percentile(boot, [2.5, 97.5])],
        **{f"{k}_ndcg@10": r["overall"]["ndcg@10"] for k, r in results.items()},
        **{f"{k}_users_per_s": r["speed"]["users_per_second"] for k, r in results.items()},
        "popularity_ndcg@10": results["dense"]["popularity"]["ndcg@10"]}))


if __name__ == "__main__":
    main()
