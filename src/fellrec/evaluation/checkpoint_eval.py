"""`fellrec test` and `fellrec recommend`: load a run's checkpoint (every client's adapter) and evaluate or
recommend with it."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch

from fellrec.errors import FellrecError


def adapter_dir(ckpt: Path, client: int) -> Path:
    """A round checkpoint keeps adapters under adapters/, RUN_DIR/best directly."""
    for candidate in (ckpt / "adapters" / f"client_{client}", ckpt / f"client_{client}"):
        if candidate.is_dir():
            return candidate
    raise FellrecError(f"no adapter for client {client} in the checkpoint", ckpt)


def _load(cfg, ckpt: Path):
    """Data, partition and the run's objective over the split model, with every client's adapter from `ckpt`."""
    from fellrec.data.partition import partition_users
    from fellrec.data.pipeline import load_data
    from fellrec.evaluation.grounding import ItemIndex
    from fellrec.model.adapters import AdapterStore
    from fellrec.federation.clients import client_users
    from fellrec.model.loading import cache_root, load_tokenizer
    from fellrec.model.split import SplitModel
    from fellrec.objectives import build_objective

    if not ckpt.is_dir():
        raise FellrecError("checkpoint directory not found", ckpt)
    data = load_data(cfg.data)
    partition = partition_users(data, cfg.partition)
    model = SplitModel(cfg.model, cfg.split)
    tokenizer = load_tokenizer(cfg.model)
    index = ItemIndex.build(model, tokenizer, data.titles, cache_dir=cache_root() / "item-index")
    objective = build_objective(cfg, model, tokenizer, data, lambda: index, autocast_for(cfg.train, model.device))
    store = objective.store = AdapterStore(model)
    objective.init_clients(store, client_users(data, partition, cfg.fed.strategy == "centralized"))
    for client in range(partition.num_clients):
        store.load(client, adapter_dir(ckpt, client))
    return data, partition, objective


def autocast_for(train, device):
    """The autocast context `fellrec fit` trained under (train.precision), for evaluation outside Fabric."""
    from fellrec.federation.precision import precision_for

    precision = precision_for(train, device.type)
    if precision == "32-true":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def evaluate_run(cfg, ckpt: Path) -> dict:
    data, partition, objective = _load(cfg, ckpt)
    results = evaluate_test_users(cfg.eval, objective, data, partition, ckpt)
    results["checkpoint"] = str(ckpt)
    write_results(results, ckpt)
    return results


def evaluate_test_users(ev, objective, data, partition, out_dir: Path, progress: bool = True) -> dict:
    """Every client's current adapter on (a seeded sample of) its test users, popularity beside it; the PNG of
    per-client NDCG@10 goes to `out_dir`. With `eval.quantize: int8` the server blocks turn int8 first, for good."""
    from fellrec.data.pipeline import sample_subset
    from fellrec.evaluation.evaluate import client_samples, tune_pop_gamma
    from fellrec.reporting.plots import plot_client_bars

    if ev.quantize == "int8":
        objective.model.rank_in_int8()
    samples = {c: sample_subset(s, ev.users_per_client, ev.seed + c, "eval.users_per_client")
               for c, s in client_samples(partition, data.test).items()}
    options = {}
    if objective.name == "generate" and (ev.popularity_aware or ev.collaborative_aware):
        if ev.collaborative_aware:
            options["collaborative"] = client_sasrecs(data, partition, objective.item_index_fn().items, ev.seed,
                                                      progress)
        options["pop_gamma"], _ = tune_pop_gamma(
            objective.model, objective.store, objective.tokenizer, data, partition, objective.style,
            objective.item_index_fn(), num_beams=ev.num_beams, max_new_tokens=ev.max_new_tokens,
            grounding=ev.grounding, batch_size=ev.batch_size, progress=progress,
            collaborative=options.get("collaborative"))
    results = objective.evaluate(samples, ev.mask, progress, **options)
    scored = {row["client"] for row in results["clients"]}
    results["skipped_clients"] = sorted(set(range(partition.num_clients)) - scored)
    plot_client_bars(results, "ndcg@10", out_dir / "clients_ndcg10.png")
    return results


def client_sasrecs(data, partition, items, seed: int, progress: bool = True) -> dict:
    """Every client's own SASRec, trained on its own training windows only (on the client: no data moves), its
    columns in `items` order (the item index's). A client without training windows gets none and is ranked by
    distance alone."""
    from tqdm.auto import tqdm

    from fellrec.baselines import train_sasrec

    windows = dict(enumerate(partition.split_samples(data.train)))
    bar = tqdm(windows.items(), desc="training each client's SASRec", unit="client", disable=not progress)
    return {c: train_sasrec(s, items, seed=seed + c) for c, s in bar if s}


def write_results(results: dict, out_dir: Path) -> None:
    """results.json (keys overall, clients, balance, popularity, ...), results.csv (one row per client) and, where
    the objective ranked every user, test_users.csv (one row per test user: paired comparisons of runs)."""
    import csv

    per_user = results.pop("per_user", None)
    (out_dir / "results.json").write_text(json.dumps(_finite_or_null(results), indent=2))
    if per_user:
        with open(out_dir / "test_users.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(per_user[0]))
            writer.writeheader()
            writer.writerows(per_user)
    popular = {row["client"]: row for row in results["popularity_clients"]}
    rows = [{**row, **{f"popularity_{k}": v for k, v in popular[row["client"]].items() if k not in ("client", "users")}}
            for row in results["clients"]]
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _finite_or_null(value):
    """NaN (e.g. the coefficient of variation of an all-zero metric) as JSON null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def recommend_for(cfg, ckpt: Path, client: int, history: list[str], top_k: int) -> list[tuple[str, float]]:
    from fellrec.evaluation.recommend import recommend

    data, partition, objective = _load(cfg, ckpt)
    if not 0 <= client < partition.num_clients:
        raise FellrecError(f"--client must be in 0..{partition.num_clients - 1}, got {client}")
    if objective.name == "score":
        return objective.recommend(client, history, top_k)
    return recommend(objective.model, objective.store, objective.tokenizer, objective.item_index_fn(), client,
                     history, top_k, objective.style, cfg.eval.num_beams, cfg.eval.max_new_tokens, cfg.eval.grounding)


def format_results(results: dict, metrics: tuple[str, ...] = ("recall@10", "ndcg@10", "hr@10")) -> str:
    """The per-client console table, overall, popularity beside it, and the balance figures."""
    popular = {row["client"]: row for row in results["popularity_clients"]}
    head = f"{'client':>8} {'users':>6} " + " ".join(f"{m:>10}" for m in metrics) + f" {'pop ndcg@10':>12}"
    lines = [f"protocol: {results.get('protocol', 'prompt')} items masked (model and popularity alike)", head]
    for row in results["clients"]:
        lines.append(f"{row['client']:>8} {row['users']:>6} " + " ".join(f"{row[m]:>10.4f}" for m in metrics)
                     + f" {popular[row['client']]['ndcg@10']:>12.4f}")
    users = sum(row["users"] for row in results["clients"])
    lines.append(f"{'overall':>8} {users:>6} " + " ".join(f"{results['overall'][m]:>10.4f}" for m in metrics)
                 + f" {results['popularity']['ndcg@10']:>12.4f}")
    b = results["balance"]["ndcg@10"]
    lines.append(f"balance of ndcg@10 across clients: std {b['std']:.4f}, worst client {b['min']:.4f}, "
                 f"max - min {b['max_minus_min']:.4f}, cv {b['cv']:.3f}")
    speed = results["speed"]
    lines.append(f"speed: {speed['users_per_second']:.2f} users/s; item embeddings "
                 f"{speed['item_embedding_seconds']:.1f} s{' (cached)' if speed['item_index_cached'] else ''}")
    return "\n".join(lines)
