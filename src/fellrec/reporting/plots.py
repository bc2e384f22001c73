"""PNG plots in the run directory: per-client bars, per-client curves over rounds, the aggregation weights."""

from __future__ import annotations

import csv
from pathlib import Path
from statistics import pstdev

import matplotlib

matplotlib.use("Agg")  # files only: no screen on these machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_rounds(run_dir: Path) -> Path:
    """Validation loss of every client over rounds and its spread across clients (the balance over time); the same
    for validation NDCG@10 when the run ranked its validation users each round (eval.per_round)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    panels = [(name, _series(rows, name)) for name in ("val_loss", "val_ndcg@10")]
    panels = [(name, series) for name, series in panels if series]
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 4 * len(panels)), squeeze=False)
    for (name, series), (left, right) in zip(panels, axes):
        clients = sorted({c for _, c in series})
        rounds = sorted({t for t, _ in series})
        for c in clients:
            left.plot(rounds, [series.get((t, c), float("nan")) for t in rounds], marker="o", label=f"client {c}")
        left.set(title=f"{name} per client", xlabel="round", ylabel=name)
        left.legend(fontsize="small")
        spread = [pstdev([series[(t, c)] for c in clients if (t, c) in series]) for t in rounds]
        right.plot(rounds, spread, marker="o", color="black")
        right.set(title=f"balance: std of {name} across clients", xlabel="round", ylabel="std")
        for ax in (left, right):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, run_dir / "rounds.png")


def _series(rows: list[dict], name: str) -> dict[tuple[int, int], float]:
    """(round, client) -> value of the column `name`, where it holds a number."""
    return {(int(r["round"]), int(r["client"])): float(r[name]) for r in rows
            if r.get(name) not in (None, "", "nan")}


def plot_weights(run_dir: Path) -> Path | None:
    """The last round's aggregation matrix as a heatmap (row i: the weights that built client i's adapter)."""
    with open(run_dir / "weights.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    last = max(int(r["round"]) for r in rows)
    rows = [r for r in rows if int(r["round"]) == last]
    ids = sorted({int(r["i"]) for r in rows})
    matrix = [[0.0] * len(ids) for _ in ids]
    for r in rows:
        matrix[ids.index(int(r["i"]))][ids.index(int(r["j"]))] = float(r["weight"])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    image = ax.imshow(matrix, cmap="viridis", vmin=0)
    ax.set(title=f"aggregation weights, round {last}", xlabel="from client j", ylabel="to client i",
           xticks=range(len(ids)), yticks=range(len(ids)), xticklabels=ids, yticklabels=ids)
    fig.colorbar(image, ax=ax)
    return _save(fig, run_dir / "weights.png")


def plot_client_bars(results: dict, metric: str, path: Path) -> Path:
    """One metric per client, the popularity ranking beside it (never hidden)."""
    clients = [c["client"] for c in results["clients"]]
    model = [c[metric] for c in results["clients"]]
    popular_by_client = {row["client"]: row[metric] for row in results["popularity_clients"]}
    popular = [popular_by_client[c] for c in clients]
    fig, ax = plt.subplots(figsize=(max(5, len(clients)), 4))
    x = range(len(clients))
    ax.bar([i - 0.2 for i in x], model, width=0.4, label="fellrec")
    ax.bar([i + 0.2 for i in x], popular, width=0.4, label="popularity", color="grey")
    ax.axhline(results["overall"][metric], color="C0", linestyle="--", linewidth=1, label="fellrec overall")
    ax.set(title=f"{metric} per client", xlabel="client", ylabel=metric, xticks=list(x), xticklabels=clients)
    ax.legend(fontsize="small")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
