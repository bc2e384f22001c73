"""compare.md and the PNG plots of experiments/compare.py, from its compare.json report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KS = (5, 10, 20)
EXTRA_COLUMNS = {"client_std": "std of NDCG@10 over clients", "worst_client": "worst client NDCG@10",
                 "val_loss": "mean best val loss", "val_loss_std": "std of best val loss over clients"}


def _cell(value: tuple[float, float], seeds: int) -> str:
    mean, spread = value
    if mean is None:  # the number does not exist for this method (popularity has no validation loss)
        return "-"
    return f"{mean:.4f} ± {spread:.4f}" if seeds > 1 else f"{mean:.4f}"


def overall_table(methods: dict, seeds: int) -> list[str]:
    columns = [f"{m}@{k}" for m in ("recall", "ndcg") for k in KS] + list(EXTRA_COLUMNS)
    lines = ["| method | " + " | ".join(EXTRA_COLUMNS.get(c, c.replace("recall", "Recall").replace("ndcg", "NDCG"))
                                       for c in columns) + " | wall s |",
             "|---" * (len(columns) + 2) + "|"]
    for name, row in methods.items():
        lines.append(f"| {name} | " + " | ".join(_cell(row[c], seeds) for c in columns)
                     + f" | {row['wall_seconds'][0]:.0f} |")
    return lines


def clients_table(methods: dict) -> list[str]:
    clients = sorted(next(iter(methods.values()))["clients"])
    lines = ["| method | " + " | ".join(f"client {c}" for c in clients) + " |", "|---" * (len(clients) + 1) + "|"]
    for name, row in methods.items():
        lines.append(f"| {name} | " + " | ".join(f"{row['clients'][c]:.4f}" for c in clients) + " |")
    return lines


def claims(methods: dict) -> list[str]:
    """The paper's two claims, checked on these numbers (not assumed)."""
    if not {"FELLRec", "FedAvg", "Local"} <= set(methods):
        return ["(FELLRec, FedAvg and Local are all needed to check the paper's claims.)"]
    ndcg = {m: methods[m]["ndcg@10"][0] for m in ("FELLRec", "FedAvg", "Local")}
    std = {m: methods[m]["client_std"][0] for m in ("FELLRec", "FedAvg")}
    loss = {m: methods[m]["val_loss"][0] for m in ("FELLRec", "FedAvg", "Local")}
    loss_std = {m: methods[m]["val_loss_std"][0] for m in ("FELLRec", "FedAvg")}
    holds = lambda ok: "holds" if ok else "does NOT hold"  # noqa: E731
    return [
        f"- Claim 1, FELLRec's overall NDCG@10 above FedAvg's and Local's: FELLRec {ndcg['FELLRec']:.4f}, "
        f"FedAvg {ndcg['FedAvg']:.4f}, Local {ndcg['Local']:.4f}: "
        f"{holds(ndcg['FELLRec'] > ndcg['FedAvg'] and ndcg['FELLRec'] > ndcg['Local'])} here.",
        f"- Claim 2, FELLRec's spread of NDCG@10 over clients below FedAvg's: std {std['FELLRec']:.4f} vs "
        f"{std['FedAvg']:.4f}: {holds(std['FELLRec'] < std['FedAvg'])} here.",
        f"- Popularity NDCG@10 on the same users: {methods['Popularity']['ndcg@10'][0]:.4f}.",
        "- The same claims on the clients' best validation loss (a proxy that still separates the methods when the "
        f"ranking metrics are all zero): mean loss FELLRec {loss['FELLRec']:.4f}, FedAvg {loss['FedAvg']:.4f}, "
        f"Local {loss['Local']:.4f}: lower than both {holds(loss['FELLRec'] < min(loss['FedAvg'], loss['Local']))}; "
        f"spread over clients FELLRec {loss_std['FELLRec']:.4f} vs FedAvg {loss_std['FedAvg']:.4f}: smaller "
        f"{holds(loss_std['FELLRec'] < loss_std['FedAvg'])}.",
    ]


def write_markdown(report: dict, args, plots: list[Path]) -> str:
    stamp, seeds = report["stamp"], len(args.seeds)
    lines = [f"# Comparison on {Path(args.config).stem}", "",
             f"- command: `{stamp['command']}`", f"- commit: {stamp['commit']}", f"- machine: {stamp['machine']}",
             f"- date: {stamp['date']}",
             f"- budget per run: {args.rounds} rounds, {args.train_samples} training samples, "
             f"{args.val_samples_per_client} validation samples and {args.users_per_client} test users per client; "
             f"seeds {args.seeds} ({'mean ± sample std' if seeds > 1 else 'one seed: no spread'}).",
             "- Every method is evaluated on the same test users with each client's best adapter; popularity ranks "
             "by training-set counts with the history masked.",
             "- With this few test users one hit moves NDCG@10 by about 0.01-0.06: read differences below that as "
             "noise.", ""]
    for partition, methods in report["partitions"].items():
        lines += [f"## {partition} partition", "", "### Overall", "", *overall_table(methods, seeds), "",
                  "### NDCG@10 per client (mean over seeds)", "", *clients_table(methods), "",
                  "### The paper's claims on these numbers", "", *claims(methods), ""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def write_plots(report: dict, out: Path) -> list[Path]:
    footer = f"{report['stamp']['command']} | commit {report['stamp']['commit']} | {report['stamp']['date']}"
    paths = []
    for partition, methods in report["partitions"].items():
        names = list(methods)
        fig, (left, middle, right) = plt.subplots(1, 3, figsize=(20, 4.8), width_ratios=(1, 1, 1.4))
        means = [methods[m]["ndcg@10"][0] for m in names]
        spreads = [methods[m]["ndcg@10"][1] for m in names]
        colors = ["grey" if m == "Popularity" else "C0" for m in names]
        left.barh(names, means, xerr=spreads, color=colors)
        left.invert_yaxis()
        left.set(title=f"overall NDCG@10 ({partition})", xlabel="NDCG@10")
        trained = [m for m in names if methods[m]["val_loss"][0] is not None]
        middle.barh(trained, [methods[m]["val_loss"][0] for m in trained],
                    xerr=[methods[m]["val_loss_std"][0] for m in trained], color="C0", alpha=0.7)
        middle.invert_yaxis()
        middle.set(title="clients' best validation loss (mean; line: std over clients)", xlabel="loss")
        clients = sorted(methods[names[0]]["clients"])
        width = 0.8 / len(names)
        for i, m in enumerate(names):
            right.bar([c + (i - len(names) / 2) * width for c in range(len(clients))],
                      [methods[m]["clients"][c] for c in clients], width=width, label=m,
                      color="grey" if m == "Popularity" else f"C{i + (i >= 7)}")  # C7 is grey
        right.set(title="NDCG@10 per client", xlabel="client", ylabel="NDCG@10", xticks=range(len(clients)),
                  xticklabels=clients)
        right.legend(fontsize="x-small", ncol=2)
        fig.text(0.01, 0.01, footer, fontsize=6, color="dimgrey")
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        path = out / f"compare_{partition}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
