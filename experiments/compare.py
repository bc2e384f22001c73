"""The paper's comparison on one dataset: Centralized, Local, FedAvg, FedProx, FELLRec and its two ablations, FELLRec
with clipped and noised uploads, and Popularity, on the same partition, samples and test users.

Every method is one real `fellrec fit` run (its own process, the config plus the method's options); each run ends
with the test evaluation of its clients' best adapters, and this script collects the runs' results.json files into
`<out>/compare.md`, `compare.json` and PNG plots, stamped with the command, commit and machine. Finished runs are
kept under --runs-dir and reused, so an interrupted comparison continues where it stopped.

    python experiments/compare.py --config conf/ml100k.yaml    # SmolLM2, a budget for 2 CPU cores: ~35 min
    python experiments/compare.py --config conf/ml100k.yaml --seeds 1 2 3 --partitions kmeans dirichlet
    python experiments/compare.py --quick --out /tmp/compare                 # tiny model, seconds per run (tests)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml
from tqdm import tqdm

from fellrec.config import DataArgs
from fellrec.reporting.stamp import dataset_name, git_commit, machine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_report import write_markdown, write_plots  # noqa: E402  (beside this script)

REPO = Path(__file__).resolve().parents[1]
KS = (5, 10, 20)
METHODS = {  # name -> `fellrec fit` options
    "Centralized": ["--fed.strategy", "centralized"],
    "Local": ["--fed.strategy", "local"],
    "FedAvg": ["--fed.strategy", "fedavg"],
    "FedProx": ["--fed.strategy", "fedprox"],
    "FELLRec": ["--fed.strategy", "fellrec"],
    "FELLRec w/o heating": ["--fed.strategy", "fellrec", "--fed.heating", "false"],
    "FELLRec w/o dynamic aggregation": ["--fed.strategy", "fellrec", "--fed.dynamic", "false"],
    "FELLRec + clip/noise": ["--fed.strategy", "fellrec", "--privacy.clip_norm", "{clip_norm}",
                             "--privacy.noise_multiplier", "{noise_multiplier}"],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default="conf/ml100k.yaml", help="Any fellrec config.")
    parser.add_argument("--quick", action="store_true",
                        help="conf/tiny.yaml, one round, 2 test users per client: checks the pipeline in seconds.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="train.seed of each repetition.")
    parser.add_argument("--partitions", nargs="+", default=["kmeans"], choices=["kmeans", "dirichlet", "iid"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rounds", type=int, default=2, help="fed.rounds of every run.")
    parser.add_argument("--train-samples", type=int, default=48, help="data.train_samples of every run.")
    parser.add_argument("--val-samples-per-client", type=int, default=8)
    parser.add_argument("--users-per-client", type=int, default=12, help="Test users per client (eval).")
    parser.add_argument("--clip-norm", type=float, default=0.05, help="privacy.clip_norm of FELLRec + clip/noise.")
    parser.add_argument("--noise-multiplier", type=float, default=0.01,
                        help="privacy.noise_multiplier of FELLRec + clip/noise.")
    parser.add_argument("--out", type=Path, default=None, help="Default: experiments/results/<dataset>.")
    parser.add_argument("--runs-dir", type=Path, default=None, help="Default: runs/compare/<dataset>.")
    args = parser.parse_args(argv)
    if args.quick:
        args.config, args.rounds, args.train_samples = "conf/tiny.yaml", 1, 36
        args.val_samples_per_client, args.users_per_client = 4, 2
    return args


def fit_command(args, method: str, partition: str, seed: int, runs_dir: Path, name: str) -> list[str]:
    options = [o.format(clip_norm=args.clip_norm, noise_multiplier=args.noise_multiplier) for o in METHODS[method]]
    return [sys.executable, "-m", "fellrec", "fit", "--config", args.config, "--out_dir", str(runs_dir),
            "--name", name, "--log.wandb", "disabled", "--fed.rounds", str(args.rounds),
            "--data.train_samples", str(args.train_samples),
            "--train.val_samples_per_client", str(args.val_samples_per_client),
            "--eval.users_per_client", str(args.users_per_client), "--eval.final", "true",
            "--partition.method", partition, "--train.seed", str(seed), *options]


def run_one(args, method: str, partition: str, seed: int, runs_dir: Path) -> dict:
    """The results of one method's run (reused when its results.json is already there)."""
    name = f"{partition}-s{seed}-{method.lower().replace(' ', '_').replace('/', '').replace('+', 'plus')}"
    run_dir = runs_dir / name
    if not (run_dir / "results.json").is_file():
        if run_dir.exists():  # an unfinished run: start it again from scratch
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        start = time.perf_counter()
        with open(run_dir.parent / f"{name}.log", "w") as log:
            done = subprocess.run(fit_command(args, method, partition, seed, runs_dir, name), cwd=REPO,
                                  stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            sys.exit(f"{method} ({partition}, seed {seed}) failed: see {run_dir.parent / f'{name}.log'}")
        (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}")
    results = json.loads((run_dir / "results.json").read_text())
    wall = run_dir / "wall_seconds.txt"
    results["wall_seconds"] = float(wall.read_text()) if wall.is_file() else float("nan")
    results["best_val_loss"] = json.loads((run_dir / "best" / "best.json").read_text())["best_val_loss"]
    return results


def summary(results: dict) -> dict:
    """The numbers the tables show for one run."""
    row = {f"{m}@{k}": results["overall"][f"{m}@{k}"] for m in ("recall", "ndcg") for k in KS}
    row["client_std"] = results["balance"]["ndcg@10"]["std"]
    row["worst_client"] = results["balance"]["ndcg@10"]["min"]
    row["clients"] = {c["client"]: c["ndcg@10"] for c in results["clients"]}
    losses = list(results["best_val_loss"].values())  # each client's best validation loss: a finer signal
    row["val_loss"], row["val_loss_std"] = statistics.fmean(losses), statistics.pstdev(losses)
    row["wall_seconds"] = results.get("wall_seconds", float("nan"))
    return row


def popularity_summary(results: dict) -> dict:
    pop = {"overall": results["popularity"], "clients": results["popularity_clients"]}
    clients = {c["client"]: c["ndcg@10"] for c in pop["clients"]}
    row = {f"{m}@{k}": pop["overall"][f"{m}@{k}"] for m in ("recall", "ndcg") for k in KS}
    row.update(client_std=statistics.pstdev(clients.values()), worst_client=min(clients.values()), clients=clients,
               val_loss=None, val_loss_std=None, wall_seconds=0.0)  # popularity has no validation loss
    return row


def aggregate(rows: list[dict]) -> dict:
    """Mean and spread (sample std; 0 for one seed) of every number over the seeds."""
    out = {}
    for key in rows[0]:
        if key == "clients":
            out[key] = {c: statistics.fmean(r[key][c] for r in rows) for c in rows[0][key]}
        else:
            values = [r[key] for r in rows]
            if None in values:
                out[key] = (None, None)
                continue
            out[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return out


def stamp(argv: list[str]) -> dict:
    return {"command": "python experiments/compare.py " + " ".join(argv), "commit": git_commit(REPO),
            "machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    config = yaml.safe_load((REPO / args.config).read_text())
    dataset = dataset_name(DataArgs(**(config.get("data") or {})))
    out = args.out or REPO / "experiments" / "results" / dataset
    runs_dir = (args.runs_dir or REPO / "runs" / "compare" / dataset) / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    runs = [(p, s, m) for p in args.partitions for s in args.seeds for m in args.methods]
    per_run: dict = {}
    for partition, seed, method in tqdm(runs, desc="compare runs", unit="run"):
        tqdm.write(f"{method} ({partition} partition, seed {seed})", file=sys.stderr)
        results = run_one(args, method, partition, seed, runs_dir)
        per_run[(partition, seed, method)] = summary(results)
        per_run.setdefault((partition, seed, "Popularity"), popularity_summary(results))
    report = {"stamp": stamp(argv), "settings": {k: str(v) for k, v in vars(args).items()}, "partitions": {}}
    for partition in args.partitions:
        methods = [*args.methods, "Popularity"]
        report["partitions"][partition] = {
            m: aggregate([per_run[(partition, s, m)] for s in args.seeds]) for m in methods}
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    paths = write_plots(report, out)
    (out / "compare.md").write_text(write_markdown(report, args, paths))
    print((out / "compare.md").read_text())
    print(f"wrote {out / 'compare.md'}, {out / 'compare.json'} and {len(paths)} plots", file=sys.stderr)


if __name__ == "__main__":
    main()
