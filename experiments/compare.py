"""The paper's comparison on one dataset with the scoring recommender: Centralized, Local, FedAvg, FedProx, FELLRec,
its two ablations, FELLRec with clipped and noised uploads, SASRec (centralized and per client) and Popularity, on
every test user; the paper's two claims answered per partition with paired-bootstrap confidence intervals.

Every LLM method is one real `fellrec fit` run (its own process, the config's budget plus the method's options); each
run ends by ranking every test user with its clients' best adapters and writes one row per user (test_users.csv),
which is what the confidence intervals resample. SASRec trains in this process on the same training windows and is
ranked by the same code with the same mask. FELLRec, FedAvg and Local (the claims) run for every seed, the other
methods for the first seed; FELLRec and FedAvg also run once with the generative (BIGRec) recommender, so the paper's
own backbone is in the table. Each finished run's row (its numbers and every test user's NDCG@10 and Recall@10) is
kept in <out>/compare_runs/<run>.json, which is committed beside compare.json: a later sitting, even on a fresh
clone, reuses those rows and runs only what is missing (`--stop-after` minutes ends a sitting between two runs). The
fits themselves (checkpoints, logs) go to --runs-dir and are not kept.

    python experiments/compare.py                       # all of it: ~30 runs of ~8 min on 2 CPU cores
    python experiments/compare.py --stop-after 60       # one sitting; run it again to go on
    python experiments/compare.py --quick --out /tmp/compare   # tiny model, seconds per run (tests)
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from fellrec.config import DataArgs, PartitionArgs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_report import write_markdown, write_plot  # noqa: E402  (beside this script)

CLAIM_METHODS = ("FELLRec", "FedAvg", "Local")
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
SASREC = ("SASRec centralized", "SASRec local")
GENERATIVE = ("FELLRec", "FedAvg")
# The committed scoring rows were measured with release years in the prompt and fp32 server blocks (the default
# config until stop 21, which drops the years and uses int8 on a CPU): later sittings keep that setting, so that new
# rows stay comparable with the saved ones.
COMPARED_SETTING = ["--data.title_years", "true", "--model.quantize", "none"]
QUICK_SCORE = ["--model.objective", "score", "--data.prompt", "compact", "--eval.mask", "history",
               "--model.score_bias", "client_prior", "--fed.rounds", "1", "--eval.users_per_client", "null"]


@dataclass(frozen=True)
class Run:
    method: str
    partition: str
    seed: int
    objective: str = "score"

    @property
    def name(self) -> str:
        slug = self.method.lower().replace(" ", "_").replace("/", "").replace("+", "plus")
        return f"{self.objective}-{self.partition}-s{self.seed}-{slug}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default="conf/ml100k.yaml", help="The scoring runs' config (its budget).")
    parser.add_argument("--generative-config", default="conf/ml100k-generative.yaml")
    parser.add_argument("--quick", action="store_true",
                        help="conf/tiny.yaml, one round: checks the pipeline in seconds per run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2],
                        help="train.seed and data.seed of each repetition (the claims' methods run them all).")
    parser.add_argument("--partitions", nargs="+", default=["kmeans", "dirichlet"],
                        choices=["kmeans", "dirichlet", "iid"])
    parser.add_argument("--methods", nargs="+", default=[*METHODS, *SASREC], choices=[*METHODS, *SASREC])
    parser.add_argument("--no-generative", action="store_true", help="Leave out the generative runs.")
    parser.add_argument("--bootstrap", type=int, default=2000, help="Bootstrap resamples of each claim's CI.")
    parser.add_argument("--clip-norm", type=float, default=0.05, help="privacy.clip_norm of FELLRec + clip/noise.")
    parser.add_argument("--noise-multiplier", type=float, default=0.01,
                        help="privacy.noise_multiplier of FELLRec + clip/noise.")
    parser.add_argument("--stop-after", type=float, default=None,
                        help="Minutes: start no new run after this; the outputs hold what is done.")
    parser.add_argument("--out", type=Path, default=None, help="Default: experiments/results/<dataset>.")
    parser.add_argument("--runs-dir", type=Path, default=None, help="Default: runs/compare/<dataset>.")
    args = parser.parse_args(argv)
    if args.quick:
        args.config = args.generative_config = "conf/tiny.yaml"
    return args


def planned_runs(args) -> list[Run]:
    """The claims' runs first (every seed of one partition, then the next), then one seed of the other methods, then
    the generative pair: a comparison stopped early has whole claims first."""
    llm = [m for m in args.methods if m in METHODS]
    runs = [Run(m, p, s) for p in args.partitions for s in args.seeds for m in CLAIM_METHODS if m in llm]
    runs += [Run(m, p, args.seeds[0]) for p in args.partitions for m in llm if m not in CLAIM_METHODS]
    if not args.no_generative:
        runs += [Run(m, args.partitions[0], args.seeds[0], "generate") for m in GENERATIVE if m in llm]
    return runs


def fit_command(args, run: Run, runs_dir: Path) -> list[str]:
    options = [o.format(clip_norm=args.clip_norm, noise_multiplier=args.noise_multiplier) for o in METHODS[run.method]]
    config = args.config if run.objective == "score" else args.generative_config
    if args.quick:
        setting = QUICK_SCORE if run.objective == "score" else ["--fed.rounds", "1"]
    else:
        setting = COMPARED_SETTING if run.objective == "score" else []
    return [sys.executable, "-m", "fellrec", "fit", "--config", config, "--out_dir", str(runs_dir),
            "--name", run.name, "--log.wandb", "disabled", "--partition.method", run.partition,
            "--train.seed", str(run.seed), "--data.seed", str(run.seed), *setting, *options]


def saved_row(path: Path, make_row) -> dict | list:
    """The row (or list of rows) saved at `path`, or `make_row()`'s, saved there first; per-user values are kept to
    6 decimals, which keeps the file small."""
    if not path.is_file():
        made = make_row()
        for row in made if isinstance(made, list) else [made]:
            row["per_user"] = [{k: round(v, 6) if isinstance(v, float) else v for k, v in u.items()}
                               for u in row["per_user"]]
        path.write_text(json.dumps(made, separators=(",", ":")))
    return json.loads(path.read_text())


def run_fit(args, run: Run, runs_dir: Path) -> dict:
    """One `fellrec fit` run's row (a run whose results.json is already there is not run again)."""
    run_dir = runs_dir / run.name
    if not (run_dir / "results.json").is_file():
        if run_dir.exists():  # an unfinished run: start it again from scratch
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        start = time.perf_counter()
        with open(runs_dir / f"{run.name}.log", "w") as log:
            done = subprocess.run(fit_command(args, run, runs_dir), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            sys.exit(f"{run.method} ({run.partition}, seed {run.seed}) failed: see {runs_dir / f'{run.name}.log'}")
        (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}")
    results = json.loads((run_dir / "results.json").read_text())
    row = run_row(run, results, float((run_dir / "wall_seconds.txt").read_text()))
    if run.method.startswith("FELLRec"):
        rounds = list(csv.DictReader(open(run_dir / "rounds.csv")))
        row["weights_offdiag_range"] = float(rounds[-1]["weights_offdiag_range"])
    users_file = run_dir / "test_users.csv"  # written where every user was ranked (score); generation samples users
    users = csv.DictReader(open(users_file)) if users_file.is_file() else []
    row["per_user"] = [{"user": u["user"], "client": int(u["client"]), "ndcg@10": float(u["ndcg@10"]),
                        "recall@10": float(u["recall@10"])} for u in users]
    return row


def run_row(run: Run, results: dict, wall_seconds: float) -> dict:
    """The numbers compare.json keeps for one run (popularity and the clients' own counts beside it)."""
    return {"method": run.method, "partition": run.partition, "seed": run.seed, "objective": run.objective,
            "users": sum(c["users"] for c in results["clients"]), "ndcg@10": results["overall"]["ndcg@10"],
            "recall@10": results["overall"]["recall@10"],
            "client_std_ndcg@10": results["balance"]["ndcg@10"]["std"],
            "clients": {str(c["client"]): c["ndcg@10"] for c in results["clients"]},
            "protocol": results.get("protocol"), "popularity_ndcg@10": results["popularity"]["ndcg@10"],
            "client_popularity_ndcg@10": (results.get("client_popularity") or {}).get("ndcg@10"),
            "wall_seconds": wall_seconds}


def sasrec_rows(args, partition: str, seed: int) -> list[dict]:
    """SASRec on the same training windows as the LLM runs (centralized: all of them; local: one model per client on
    its own), ranked by the same code with the same mask on every test user."""
    from fellrec.baselines import train_sasrec
    from fellrec.data.partition import partition_users
    from fellrec.data.pipeline import load_data
    from fellrec.data.table import natural_key
    from fellrec.evaluation.evaluate import masked_items
    from fellrec.evaluation.retrieval import per_user_metrics

    config = yaml.safe_load((REPO / args.config).read_text())
    data = load_data(DataArgs(**{**(config.get("data") or {}), "seed": seed}))
    parts = partition_users(data, PartitionArgs(**{**(config.get("partition") or {}), "method": partition}))
    items = sorted(data.titles, key=natural_key)
    column = {item: j for j, item in enumerate(items)}
    tests = {c: s for c, s in enumerate(parts.split_samples(data.test)) if s}
    mask = (config.get("eval") or {}).get("mask", "history") if not args.quick else "history"
    masked = masked_items(data, tests, mask)
    trains = parts.split_samples(data.train)
    rows = []
    for method in [m for m in SASREC if m in args.methods]:
        start, per_user, clients = time.perf_counter(), [], {}
        central = train_sasrec(data.train, items, seed=seed) if method == "SASRec centralized" else None
        for c, samples in tests.items():
            model = central or train_sasrec(trains[c], items, seed=seed)
            flags = lambda sets: _flags(sets, column)  # noqa: E731
            values = per_user_metrics(model.score([s.history for s in samples]), flags([set(s.targets) for s in
                                      samples]), flags(masked[c]), ks=(10,))
            clients[str(c)] = float(values["ndcg@10"].mean())
            per_user += [{"user": s.user, "client": c, "ndcg@10": float(values["ndcg@10"][u]),
                          "recall@10": float(values["recall@10"][u])} for u, s in enumerate(samples)]
        rows.append({"method": method, "partition": partition, "seed": seed, "objective": "sasrec",
                     "users": len(per_user), "ndcg@10": statistics.fmean(float(u["ndcg@10"]) for u in per_user),
                     "recall@10": statistics.fmean(float(u["recall@10"]) for u in per_user),
                     "client_std_ndcg@10": statistics.pstdev(clients.values()), "clients": clients,
                     "protocol": mask, "wall_seconds": time.perf_counter() - start, "per_user": per_user})
    return rows


def cached_sasrec_rows(args, partition: str, seed: int, rows_dir: Path) -> list[dict]:
    """The saved SASRec rows of the methods asked for; trained again (all asked for) only when one is missing."""
    path = rows_dir / f"sasrec-{partition}-s{seed}.json"
    wanted = {m for m in SASREC if m in args.methods}
    if not wanted:
        return []
    if path.is_file() and not wanted <= {r["method"] for r in json.loads(path.read_text())}:
        path.unlink()
    return [r for r in saved_row(path, lambda: sasrec_rows(args, partition, seed)) if r["method"] in wanted]


def _flags(item_sets, column):
    import torch

    flags = torch.zeros(len(item_sets), len(column), dtype=torch.bool)
    for u, items in enumerate(item_sets):
        flags[u, [column[i] for i in items if i in column]] = True
    return flags


def per_user_table(rows: list[dict], method: str, partition: str) -> dict[str, tuple[int, np.ndarray]]:
    """user -> (client, NDCG@10 per seed) of a method's scoring runs, over the seeds every user has."""
    runs = [r for r in rows if r["method"] == method and r["partition"] == partition and r["objective"] != "generate"]
    table: dict[str, list] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        for u in r["per_user"]:
            table.setdefault(u["user"], [int(u["client"]), {}])[1][r["seed"]] = float(u["ndcg@10"])
    return table


def claims(rows: list[dict], partitions: list[str], resamples: int) -> list[dict]:
    """Per partition: FELLRec above FedAvg, FELLRec above Local (mean per-user NDCG@10 difference), and FELLRec's
    clients more even than FedAvg's (std over clients of NDCG@10, FedAvg's minus FELLRec's). 95% CIs by a paired
    bootstrap over users; a user's value is its mean over the seeds both methods ran (pooled over seeds)."""
    out = []
    for partition in partitions:
        fellrec = per_user_table(rows, "FELLRec", partition)
        for other, claim in (("FedAvg", "FELLRec above FedAvg"), ("Local", "FELLRec above Local"),
                             ("FedAvg", "FELLRec's clients more even than FedAvg's")):
            paired = paired_values(fellrec, per_user_table(rows, other, partition))
            if paired is None:
                continue
            clients, mine, theirs, seeds = paired
            if "even" in claim:
                diff, ci = bootstrap(lambda i: client_std(theirs[i], clients[i]) - client_std(mine[i], clients[i]),
                                     clients, resamples)
            else:
                diff, ci = bootstrap(lambda i: float(np.mean(mine[i] - theirs[i])), clients, resamples)
            verdict = "holds" if ci[0] > 0 else "does not hold" if ci[1] < 0 else "cannot tell"
            out.append({"claim": claim, "partition": partition, "mean_diff": diff, "ci95": ci, "verdict": verdict,
                        "seeds": seeds, "users": len(clients)})
    return out


def paired_values(mine: dict, theirs: dict):
    """(client, my value, their value) arrays over the users both have, each averaged over the seeds both ran for
    that user, and those seeds; None when the methods share no user."""
    clients, a, b, seeds = [], [], [], set()
    for user in sorted(set(mine) & set(theirs)):
        shared = sorted(set(mine[user][1]) & set(theirs[user][1]))
        if shared:
            clients.append(mine[user][0])
            a.append(np.mean([mine[user][1][s] for s in shared]))
            b.append(np.mean([theirs[user][1][s] for s in shared]))
            seeds.update(shared)
    if not clients:
        return None
    return np.array(clients), np.array(a), np.array(b), sorted(seeds)


def client_std(values: np.ndarray, clients: np.ndarray) -> float:
    """Population std over clients of each client's mean value (results.json's balance std)."""
    return float(np.std([values[clients == c].mean() for c in np.unique(clients)]))


def bootstrap(statistic, clients: np.ndarray, resamples: int, seed: int = 0) -> tuple[float, list[float]]:
    """(the statistic on all users, its 95% percentile interval): users resampled with replacement within each
    client, so every resample keeps each client's size."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(clients == c) for c in np.unique(clients)]
    draws = [statistic(np.concatenate([rng.choice(g, len(g)) for g in groups])) for _ in range(resamples)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return statistic(np.arange(len(clients))), [float(low), float(high)]


def stamp(argv: list[str]) -> dict:
    from fellrec.reporting.stamp import git_commit, machine

    return {"command": "python experiments/compare.py " + " ".join(argv), "commit": git_commit(REPO),
            "machine": machine(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_outputs(rows: list[dict], args, argv: list[str], out: Path, planned: int) -> dict:
    report = {"stamp": stamp(argv), "settings": {k: str(v) for k, v in vars(args).items()},
              "planned_runs": planned, "runs": [{k: v for k, v in r.items() if k != "per_user"} for r in rows],
              "claims": claims(rows, args.partitions, args.bootstrap),
              "wall_seconds": sum(r["wall_seconds"] for r in rows)}
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    write_plot(report, out / "compare.png")
    (out / "compare.md").write_text(write_markdown(report))
    return report


def main(argv=None) -> None:
    from fellrec.reporting.stamp import dataset_name

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    config = yaml.safe_load((REPO / args.config).read_text())
    dataset = dataset_name(DataArgs(**(config.get("data") or {})))
    out = args.out or REPO / "experiments" / "results" / dataset
    runs_dir = (args.runs_dir or REPO / "runs" / "compare" / dataset) / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    rows_dir = out / "compare_runs"
    for folder in (runs_dir, rows_dir):
        folder.mkdir(parents=True, exist_ok=True)
    rows = [r for p in args.partitions for s in args.seeds for r in cached_sasrec_rows(args, p, s, rows_dir)]
    plan, start, stopped = planned_runs(args), time.perf_counter(), False
    for run in tqdm(plan, desc="compare runs", unit="run"):
        done = (rows_dir / f"{run.name}.json").is_file()
        if not (done or stopped) and args.stop_after is not None and time.perf_counter() - start > 60 * args.stop_after:
            tqdm.write(f"--stop-after {args.stop_after} min: no runs from {run.name} on", file=sys.stderr)
            stopped = True  # no new runs from here on; the saved rows after this point still go in the report
        if not done and stopped:
            continue
        tqdm.write(f"{run.method} ({run.objective}, {run.partition} partition, seed {run.seed})", file=sys.stderr)
        rows.append(saved_row(rows_dir / f"{run.name}.json", lambda: run_fit(args, run, runs_dir)))
        write_outputs(rows, args, argv, out, len(plan))
    report = write_outputs(rows, args, argv, out, len(plan))
    print((out / "compare.md").read_text())
    print(f"wrote {out / 'compare.md'}, compare.json and compare.png ({len(report['runs'])} runs)", file=sys.stderr)


if __name__ == "__main__":
    main()
