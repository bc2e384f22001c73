"""Which `fed.similarity_on`, `fed.similarity_centred` and `fed.similarity_weighting` (with its tau) FELLRec should
default to (issue 11), measured on validation NDCG@10 beside how far the aggregation weights move from uniform.

A full LLM federation per mode and seed does not fit a 2-core CPU, so this runs the real strategies (FELLRec with
each similarity mode, FedAvg, Local; heating as configured by default) on the real ML-100K windows, k-means clients
and validation users, around a recommender small enough for a CPU that keeps what decides the cosine: a frozen
base, LoRA adapters starting from a shared random A and B = 0, and (``score`` variant) the scoring objective's
trainable item table and bias. The "base LLM" reads a prompt as the mean of its items' frozen title embeddings
(SmolLM2's, from the grounding cache when present; otherwise seeded random features); the user vector is that
through a LoRA-adapted linear layer; score = 20 * cos(user, item) + bias, full-softmax cross-entropy.

    python experiments/similarity_modes.py --out experiments/results/ml100k                        # 1024 windows, ~1.5 min
    python experiments/similarity_modes.py --train-samples 10000 --out experiments/results/ml100k  # ~5 min
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from fellrec.config import DataArgs, PartitionArgs
from fellrec.data.partition import partition_users
from fellrec.data.pipeline import load_data
from fellrec.data.table import natural_key
from fellrec.evaluation.metrics import mean_metrics
from fellrec.federation.strategies import build_strategy
from fellrec.model.loading import cache_root
from fellrec.reporting.round_log import offdiag_range
from fellrec.reporting.stamp import git_commit, machine

A, B, TABLE, BIAS = "user.lora_A.weight", "user.lora_B.weight", "item_table.weight", "item_bias"
RANK, LORA_SCALE, COS_SCALE, K = 8, 2.0, 20.0, 10
METHODS = {  # name -> (strategy, its options)
    "FELLRec params (release)": ("fellrec", {"similarity_on": "params"}),
    "FELLRec update": ("fellrec", {"similarity_on": "update"}),
    "FELLRec drift": ("fellrec", {"similarity_on": "drift"}),
    "FELLRec product": ("fellrec", {"similarity_on": "product"}),
    **{f"FELLRec update, softmax tau {tau}": ("fellrec", {"similarity_on": "update", "similarity_weighting": "softmax",
                                                          "tau": tau}) for tau in (1.0, 0.5, 0.3, 0.2)},
    "FELLRec update, centred": ("fellrec", {"similarity_on": "update", "similarity_centred": True}),
    "FELLRec update, centred, softmax tau 0.5": ("fellrec", {"similarity_on": "update", "similarity_centred": True,
                                                             "similarity_weighting": "softmax", "tau": 0.5}),
    "FedAvg": ("fedavg", {}), "Local": ("local", {})}


def item_features(items: list[str], seed: int) -> tuple[Tensor, str]:
    """Unit-norm frozen title embeddings: the base model's (grounding cache) or seeded random ones."""
    from safetensors.torch import load_file

    for path in sorted((cache_root() / "item-index").glob("items-*.safetensors")):
        emb = load_file(str(path))["embeddings"].float()
        if emb.shape[0] == len(items):
            return torch.nn.functional.normalize(emb, dim=1), f"SmolLM2 title embeddings ({path.name})"
    emb = torch.randn(len(items), 256, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(emb, dim=1), "seeded random features"


class Task:
    """Encoded windows, validation users and the frozen features of one data seed."""

    def __init__(self, train_samples: int, seed: int, clients: int):
        data = load_data(DataArgs(source="movielens100k", train_samples=train_samples, seed=seed))
        self.items = sorted(data.titles, key=natural_key)
        self.row = {item: i for i, item in enumerate(self.items)}
        self.features, self.feature_source = item_features(self.items, seed)
        partition = partition_users(data, PartitionArgs(method="kmeans", num_clients=clients, seed=42))
        known: dict[str, set[str]] = {}
        for user, item in data.train_pairs:
            known.setdefault(user, set()).add(item)
        self.train = [self.encode(s) for s in partition.split_samples(data.train)]
        valid = partition.split_samples(data.valid)
        self.valid = [(self.encode(v), [[self.row[i] for i in known.get(s.user, ())] for s in v]) for v in valid]

    def encode(self, samples) -> tuple[Tensor, Tensor]:
        """Prompt vectors (mean of the history's frozen features) and target rows (first target)."""
        x = torch.stack([self.features[[self.row[i] for i in s.history]].mean(0) for s in samples])
        return x, torch.tensor([self.row[s.targets[0]] for s in samples])


def initial_state(task: Task, seed: int, with_table: bool) -> dict[str, Tensor]:
    """peft's LoRA start (A uniform in +-1/sqrt(in), B = 0) and, for the score variant, the item table and bias."""
    dim = task.features.shape[1]
    g = torch.Generator().manual_seed(seed)
    state = {A: (torch.rand(RANK, dim, generator=g) * 2 - 1) / math.sqrt(dim), B: torch.zeros(dim, RANK)}
    if with_table:
        state.update({TABLE: task.features.clone(), BIAS: torch.zeros(len(task.items))})
    return state


def scores(state: dict[str, Tensor], x: Tensor, task: Task) -> Tensor:
    user = x + LORA_SCALE * (x @ state[A].T) @ state[B].T
    table = state.get(TABLE, task.features)
    logits = COS_SCALE * torch.nn.functional.normalize(user, dim=1) @ torch.nn.functional.normalize(table, dim=1).T
    return logits + state[BIAS] if BIAS in state else logits


def train_local(state, data, task, seed, lr, batch_size=32) -> tuple[dict, float]:
    """One local epoch (fresh Adam, as the release); returns the new state and the mean training loss."""
    params = {k: t.clone().requires_grad_(True) for k, t in state.items()}
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    x, y = data
    losses = []
    for batch in torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).split(batch_size):
        loss = torch.nn.functional.cross_entropy(scores(params, x[batch], task), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return {k: t.detach() for k, t in params.items()}, statistics.fmean(losses)


@torch.no_grad()
def validation_ndcg(state, client: int, task: Task) -> tuple[float, int]:
    (x, y), masks = task.valid[client]
    s = scores(state, x, task)
    for row, mask in enumerate(masks):
        s[row, mask] = float("-inf")
    top = s.topk(K, dim=1).indices.tolist()
    return mean_metrics(top, [{t} for t in y.tolist()], ks=(K,))[f"ndcg@{K}"], len(y)


def federate(method: str, task: Task, seed: int, rounds: int, lr: float, with_table: bool) -> dict:
    name, options = METHODS[method]
    strategy = build_strategy(name, **options)
    init = initial_state(task, seed, with_table)
    strategy.set_initial(init)
    clients = range(len(task.train))
    states = {c: dict(init) for c in clients}
    counts = {c: len(task.train[c][1]) for c in clients}
    per_round, ranges = [], []
    for r in range(rounds):
        trained = {c: train_local(states[c], task.train[c], task, seed * 1000 + r * 10 + c, lr) for c in clients}
        states = strategy.aggregate_round({c: t[0] for c, t in trained.items()}, counts,
                                          {c: t[1] for c, t in trained.items()}, r, start_states=states)
        ranges.append(offdiag_range(strategy.last_weights.tolist()))
        per_round.append({c: validation_ndcg(states[c], c, task) for c in clients})
    users = {c: per_round[0][c][1] for c in clients}
    overall = lambda ndcg: sum(ndcg[c] * users[c] for c in clients) / sum(users.values())  # noqa: E731
    best = {c: max(rnd[c][0] for rnd in per_round) for c in clients}  # each client's best round, as fit keeps
    return {"best": overall(best), "final": overall({c: per_round[-1][c][0] for c in clients}),
            "offdiag_range": statistics.fmean(x for x in ranges if x is not None)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--train-samples", type=int, default=1024, help="Few-shot windows (the paper's 1024).")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=None,
                        help="Write similarity_modes_<train samples>.json and .md here.")
    opts = parser.parse_args(argv)
    results: dict = {}
    started = time.perf_counter()
    for seed in opts.seeds:
        task = Task(opts.train_samples, seed, clients=5)
        for variant, with_table in (("lora", False), ("score", True)):
            for method in METHODS:
                res = federate(method, task, seed, opts.rounds, opts.lr, with_table)
                results.setdefault(variant, {}).setdefault(method, []).append(res)
                print(json.dumps({"seed": seed, "variant": variant, "method": method, **res}), file=sys.stderr,
                      flush=True)
    report = {"settings": {**vars(opts), "out": str(opts.out), "features": task.feature_source,
                           "seconds": round(time.perf_counter() - started)}, "results": results,
              "stamp": {"command": "python experiments/similarity_modes.py " + " ".join(sys.argv[1:] if argv is None
                                                                                         else argv),
                        "commit": git_commit(Path(__file__).resolve().parents[1]), "machine": machine(),
                        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}}
    table = markdown(report)
    print(table)
    if opts.out:
        opts.out.mkdir(parents=True, exist_ok=True)
        stem = f"similarity_modes_{opts.train_samples}"
        (opts.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
        (opts.out / f"{stem}.md").write_text(table)


def markdown(report: dict) -> str:
    s = report["settings"]
    st = report["stamp"]
    lines = [f"# fed.similarity_on, similarity_centred and similarity_weighting on ML-100K (proxy federation, {len(s['seeds'])} seeds)", "",
             f"- command: `{st['command']}`", f"- commit: {st['commit']}", f"- machine: {st['machine']}",
             f"- date: {st['date']}",
             f"- {s['train_samples']} training windows, 5 k-means clients, {s['rounds']} rounds, Adam lr {s['lr']}, "
             f"features: {s['features']}; {s['seconds']} s.",
             "- validation NDCG@10 over every client's validation users, history masked, weighted by users; "
             "best = each client's best round (what fit keeps), final = the last round; mean +- sd over seeds.",
             "- off-diagonal range: max - min of the aggregation matrix's off-diagonal entries, mean over rounds.", ""]
    for variant, title in (("lora", "LoRA only (the generate objective)"),
                           ("score", "LoRA + item table and bias (the score objective)")):
        lines += [f"## {title}", "", "| method | best val NDCG@10 | final val NDCG@10 | off-diagonal range |",
                  "|---|---|---|---|"]
        for method, runs in report["results"][variant].items():
            cells = [_mean_sd([r[k] for r in runs]) for k in ("best", "final", "offdiag_range")]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} +- {statistics.stdev(values):.4f}"


if __name__ == "__main__":
    main()
