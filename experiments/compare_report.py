"""compare.md and compare.png of experiments/compare.py, from its compare.json report."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def method_rows(report: dict, partition: str) -> list[dict]:
    """One row per (method, objective) of a partition: means and spread over its seeds, Popularity and the clients'
    own counts (where the runs report them) last."""
    runs = [r for r in report["runs"] if r["partition"] == partition]
    out = []
    for key in dict.fromkeys((r["method"], r["objective"]) for r in runs):
        group = [r for r in runs if (r["method"], r["objective"]) == key]
        ndcg = [r["ndcg@10"] for r in group]
        offdiag = [r["weights_offdiag_range"] for r in group if "weights_offdiag_range" in r]
        out.append({"method": key[0], "objective": key[1], "seeds": len(group), "users": group[0]["users"],
                    "ndcg": statistics.fmean(ndcg), "ndcg_sd": statistics.stdev(ndcg) if len(ndcg) > 1 else 0.0,
                    "recall": statistics.fmean(r["recall@10"] for r in group),
                    "client_std": statistics.fmean(r["client_std_ndcg@10"] for r in group),
                    "offdiag": min(offdiag) if offdiag else None,
                    "wall": statistics.fmean(r["wall_seconds"] for r in group)})
    llm = [r for r in runs if r["objective"] == "score"]
    if llm:
        base = {"objective": "-", "seeds": 1, "users": llm[0]["users"], "ndcg_sd": 0.0, "recall": None,
                "client_std": None, "offdiag": None, "wall": 0.0}
        out.append({**base, "method": "Popularity", "ndcg": llm[0]["popularity_ndcg@10"]})
        if llm[0].get("client_popularity_ndcg@10") is not None:
            out.append({**base, "method": "Each client's own counts", "ndcg": llm[0]["client_popularity_ndcg@10"]})
    return out


def _num(value, digits=4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_markdown(report: dict) -> str:
    s = report["stamp"]
    lines = ["# The comparison on ML-100K", "", f"- command: `{s['command']}`", f"- commit: {s['commit']}",
             f"- machine: {s['machine']}", f"- date: {s['date']}",
             f"- LLM runs done: {sum(r['objective'] != 'sasrec' for r in report['runs'])} of {report['planned_runs']} "
             f"planned, plus {sum(r['objective'] == 'sasrec' for r in report['runs'])} SASRec rows; "
             f"wall time of the runs: {report['wall_seconds'] / 60:.0f} min", ""]
    protocol = next((r["protocol"] for r in report["runs"] if r.get("protocol")), "?")
    for partition in dict.fromkeys(r["partition"] for r in report["runs"]):
        lines += [f"## {partition} partition ({protocol} mask)", "",
                  "| method | objective | seeds | users | NDCG@10 (mean ± sd over seeds) | Recall@10 | "
                  "std of NDCG@10 over clients | weights off-diagonal range (min) | wall s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in method_rows(report, partition):
            sd = f" ± {r['ndcg_sd']:.4f}" if r["seeds"] > 1 else ""
            lines.append(f"| {r['method']} | {r['objective']} | {r['seeds']} | {r['users']} | {r['ndcg']:.4f}{sd} | "
                         f"{_num(r['recall'])} | {_num(r['client_std'])} | {_num(r['offdiag'], 3)} | "
                         f"{r['wall']:.0f} |")
        lines.append("")
    lines += ["## The paper's claims", "",
              "Paired bootstrap over users (resampled within each client), each user's NDCG@10 averaged over the "
              "seeds both methods ran; the balance claim compares the std over clients (FedAvg's minus FELLRec's).",
              "", "| claim | partition | seeds | users | mean difference | 95% CI | verdict |",
              "|---|---|---|---|---|---|---|"]
    for c in report["claims"]:
        lines.append(f"| {c['claim']} | {c['partition']} | {len(c['seeds'])} | {c['users']} | {c['mean_diff']:+.4f} "
                     f"| [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | {c['verdict']} |")
    if not report["claims"]:
        lines.append("| (no claim has both methods' runs yet) | | | | | | |")
    return "\n".join(lines) + "\n"


def write_plot(report: dict, path: Path) -> None:
    """NDCG@10 of every method per partition (error bars: sd over seeds, the line: popularity) and the claims'
    confidence intervals."""
    partitions = list(dict.fromkeys(r["partition"] for r in report["runs"]))
    fig, axes = plt.subplots(1, len(partitions) + 1, figsize=(6 * (len(partitions) + 1), 5), squeeze=False)
    for ax, partition in zip(axes[0], partitions):
        rows = [r for r in method_rows(report, partition) if r["objective"] != "-"]
        labels = [f"{r['method']} ({r['objective']})" for r in rows]
        ax.barh(labels, [r["ndcg"] for r in rows], xerr=[r["ndcg_sd"] for r in rows], color="tab:blue")
        for r in method_rows(report, partition):
            if r["objective"] == "-":
                ax.axvline(r["ndcg"], color="k" if r["method"] == "Popularity" else "tab:orange", ls="--",
                           label=r["method"])
        ax.set(title=f"{partition} partition", xlabel="NDCG@10 (all test users)")
        ax.invert_yaxis()
        ax.legend(loc="lower right", fontsize=8)
    ax = axes[0][-1]
    for y, c in enumerate(report["claims"]):
        ax.errorbar(c["mean_diff"], y, xerr=[[c["mean_diff"] - c["ci95"][0]], [c["ci95"][1] - c["mean_diff"]]],
                    fmt="o", capsize=4)
    ax.set_yticks(range(len(report["claims"])), [f"{c['claim']}\n({c['partition']})" for c in report["claims"]],
                  fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set(title="claims: difference and 95% CI", xlabel="difference (> 0: the claim's direction)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
