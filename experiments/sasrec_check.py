"""SASRec on ML-100K next to popularity: centralized, few-shot (a random subset of the training windows, as the LLM
gets) and per client (one model per k-means client on its own windows). Test users ranked with their whole known
history masked (every training-period item and the validation item); NDCG@10 and Recall@10 over the test users.

    python experiments/sasrec_check.py                       # ~2 min on one CPU thread
    python experiments/sasrec_check.py --seeds 0 1 2 --out experiments/results/ml100k
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from dataclasses import asdict
from pathlib import Path

import torch

from fellrec.baselines import SASRecArgs, train_sasrec
from fellrec.config import DataArgs, PartitionArgs
from fellrec.data.partition import partition_users
from fellrec.data.pipeline import load_data, sample_subset
from fellrec.data.table import natural_key
from fellrec.evaluation.metrics import mean_metrics
from fellrec.evaluation.popularity import PopularityRanker
from fellrec.reporting.stamp import git_commit, machine

K = 10


def known_items(data) -> dict[str, set[str]]:
    """Every item a user is known to have: the training period plus what the test history holds (the validation
    item)."""
    known: dict[str, set[str]] = {}
    for user, item in data.train_pairs:
        known.setdefault(user, set()).add(item)
    for sample in data.test:
        known.setdefault(sample.user, set()).update(sample.history)
    return known


def top_k(scores: torch.Tensor, items: list[str], masks: list[set[str]]) -> list[list[str]]:
    column = {item: j for j, item in enumerate(items)}
    scores = scores.clone()
    for row, mask in enumerate(masks):
        scores[row, [column[i] for i in mask if i in column]] = float("-inf")
    return [[items[j] for j in row] for row in scores.topk(K, dim=1).indices.tolist()]


def evaluate(model, tests, known, items) -> dict:
    ranked = top_k(model.score([s.history for s in tests]), items, [known[s.user] for s in tests])
    return mean_metrics(ranked, [set(s.targets) for s in tests], ks=(K,))


def run(name, samples, tests, known, items, args, seed) -> dict:
    start = time.perf_counter()
    model = train_sasrec(samples, items, args, seed)
    seconds = time.perf_counter() - start
    metrics = evaluate(model, tests, known, items)
    row = {"setting": name, "seed": seed, "windows": len(samples), "users": len(tests),
           f"ndcg@{K}": metrics[f"ndcg@{K}"], f"recall@{K}": metrics[f"recall@{K}"], "train_s": seconds}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--few-shot", type=int, default=2000, help="Training windows of the few-shot run.")
    parser.add_argument("--out", type=Path, default=None, help="Write sasrec.json and sasrec.md here.")
    opts = parser.parse_args(argv)
    data = load_data(DataArgs(source="movielens100k"))
    items = sorted(data.titles, key=natural_key)
    known = known_items(data)
    popularity = PopularityRanker(data.train_pairs)
    pop = mean_metrics([popularity.recommend(sorted(known[s.user]), K) for s in data.test],
                       [set(s.targets) for s in data.test], ks=(K,))
    partition = partition_users(data, PartitionArgs(method="kmeans", num_clients=5, seed=42))
    args = SASRecArgs()
    rows = []
    for seed in opts.seeds:
        rows.append(run("centralized", data.train, data.test, known, items, args, seed))
        few = sample_subset(data.train, opts.few_shot, seed, "few-shot")
        rows.append(run(f"few-shot {opts.few_shot}", few, data.test, known, items, args, seed))
        target_only = SASRecArgs(all_positions=False)
        rows.append(run(f"few-shot {opts.few_shot}, target only", few, data.test, known, items, target_only, seed))
        per_client = [run(f"client {c}", train, test, known, items, args, seed) for c, (train, test) in
                      enumerate(zip(partition.split_samples(data.train), partition.split_samples(data.test)))]
        users = sum(r["users"] for r in per_client)
        rows.append({"setting": "per client (5 k-means clients)", "seed": seed, "windows": len(data.train),
                     "users": users, **{m: sum(r[m] * r["users"] for r in per_client) / users
                                        for m in (f"ndcg@{K}", f"recall@{K}")},
                     "train_s": sum(r["train_s"] for r in per_client)})
    # Popularity counted on the few-shot windows only (what the few-shot SASRec saw), beside the full counts.
    few = sample_subset(data.train, opts.few_shot, opts.seeds[0], "few-shot")
    few_pop = PopularityRanker((s.user, i) for s in few for i in (*s.history, *s.targets))
    pop_few = mean_metrics([few_pop.recommend(sorted(known[s.user]), K) for s in data.test],
                           [set(s.targets) for s in data.test], ks=(K,))
    report = {"sasrec_args": asdict(args), "popularity": {m: pop[m] for m in (f"ndcg@{K}", f"recall@{K}")},
              "popularity_few_shot": {m: pop_few[m] for m in (f"ndcg@{K}", f"recall@{K}")},
              "rows": rows, "threads": torch.get_num_threads(), "stamp": stamp(argv)}
    table = markdown(report)
    print(table)
    if opts.out:
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "sasrec.json").write_text(json.dumps(report, indent=2))
        (opts.out / "sasrec.md").write_text(table)


def stamp(argv) -> dict:
    return {"command": "python experiments/sasrec_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "commit": git_commit(Path(__file__).resolve().parents[1]), "machine": machine(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def markdown(report: dict) -> str:
    s = report["stamp"]
    lines = ["# SASRec on ML-100K", "", f"- command: `{s['command']}`", f"- commit: {s['commit']}",
             f"- machine: {s['machine']}", f"- date: {s['date']}", "",
             f"| setting | windows | test users | NDCG@{K} | Recall@{K} | train s |", "|---|---|---|---|---|---|"]
    settings = list(dict.fromkeys(r["setting"] for r in report["rows"]))
    for setting in settings:
        rows = [r for r in report["rows"] if r["setting"] == setting]
        cell = lambda m: _mean_sd([r[m] for r in rows])  # noqa: E731
        lines.append(f"| SASRec {setting} | {rows[0]['windows']} | {rows[0]['users']} | {cell(f'ndcg@{K}')} | "
                     f"{cell(f'recall@{K}')} | {statistics.fmean(r['train_s'] for r in rows):.1f} |")
    for key, name in (("popularity", "Popularity (training-period counts)"),
                      ("popularity_few_shot", "Popularity (few-shot windows' items)")):
        pop = report[key]
        lines.append(f"| {name} | - | {report['rows'][0]['users']} | {pop[f'ndcg@{K}']:.4f} | "
                     f"{pop[f'recall@{K}']:.4f} | 0 |")
    seeds = sorted({r["seed"] for r in report["rows"]})
    lines.append(f"\nseeds {seeds} (mean +- sd over seeds), {report['threads']} CPU thread(s); "
                 f"history masked (every training-period item and the validation item).")
    return "\n".join(lines) + "\n"


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} +- {statistics.stdev(values):.4f}"


if __name__ == "__main__":
    main()
