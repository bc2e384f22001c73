"""The boundary defence measured (`fellrec audit --boundary-noise ...`): what `split.boundary_noise` hides from the
audit's attacks, and what it costs in ranking quality (NDCG@10 of a short fit of the scoring objective at each level,
at the run config's own k and budget). Outputs defence.md, defence.json (key `rows`) and defence.png."""

from __future__ import annotations

from pathlib import Path

from fellrec.privacy.audit import ATTACKS
from fellrec.privacy.report import _LABELS, _SHORT, _pct, write_report


def defence_rows(audit_rows: list[dict], fits: dict[float, dict], fit_k: int) -> list[dict]:
    """The audit rows with each level's fit beside them: `ndcg@10` and `popularity_ndcg@10` on the row whose k is the
    fit's k (None on the others: the fit ran at one k only)."""
    rows = []
    for row in audit_rows:
        fit = fits.get(row["noise"]) if row["k"] == fit_k else None
        rows.append({**row, "ndcg@10": fit["ndcg@10"] if fit else None,
                     "popularity_ndcg@10": fit["popularity_ndcg@10"] if fit else None})
    return rows


def format_defence_table(rows: list[dict]) -> str:
    header = ["k", "noise"] + [f"{_SHORT[a]} token" for a in ATTACKS] + [f"{_SHORT[a]} title" for a in ATTACKS] + [
        "NDCG@10", "popularity"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    for r in rows:
        ndcg = [f"{r[key]:.4f}" if r[key] is not None else "" for key in ("ndcg@10", "popularity_ndcg@10")]
        cells = ([str(r["k"]), f"{r['noise']:g}"] + [_pct(r[f"{a}_token_recovery"]) for a in ATTACKS]
                 + [_pct(r[f"{a}_title_recovery"]) for a in ATTACKS] + ndcg)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(result: dict) -> str:
    r = result
    return f"""# Boundary defence: what Gaussian noise on h_k hides, and what it costs

`split.boundary_noise` adds Gaussian noise to h_k on the client before it leaves, its std that multiple of each \
token's RMS, in training and inference. The attacks are the privacy audit's (audit.md), with the attacker knowing \
the defence: its inverters train on noised h_k of public text. NDCG@10 is that of a short fit of the scoring \
objective with the same noise, at k = {r['fit_k']} and the run config's budget ({r['fit_budget']}), on \
{r['fit_users']} test users under the {r['protocol']} mask, popularity beside it.

{format_defence_table(r['rows'])}

Dataset `{r['dataset']}`, model `{r['model']}`, victim client {r['victim_client']}: {r['victim_titles']} title \
occurrences ({r['victim_tokens']} tokens); attacker's public text {r['public_titles']} titles; inverters trained \
{r['epochs']} epochs (seed {r['seed']}).

Run:
- command: `{r['command']}`
- git commit: `{r['git_commit']}`
- machine: {r['machine']}
- wall time: {r['wall_s']:.0f} s (fits: {r['fit_wall_s']:.0f} s)
"""


def plot_defence(result: dict, path: Path) -> Path:
    """Token recovery of each attack (x) against NDCG@10 (y) at the fit's k, one point per noise level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["ndcg@10"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for attack in ATTACKS:
        ax.plot([r[f"{attack}_token_recovery"] for r in rows], [r["ndcg@10"] for r in rows], marker="o",
                label=_LABELS[attack])
    for r in rows:
        ax.annotate(f"noise {r['noise']:g}", (r["mlp_token_recovery"], r["ndcg@10"]), fontsize="small",
                    textcoords="offset points", xytext=(4, 4))
    if rows:
        ax.axhline(rows[0]["popularity_ndcg@10"], color="grey", linestyle="--", label="popularity")
    ax.set(xlabel=f"title-token recovery from h_{result['fit_k']}", ylabel="NDCG@10 (short fit)", xlim=(-0.03, 1.03))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_defence_report(result: dict, out_dir: Path) -> list[Path]:
    return write_report(result, out_dir, "defence", _markdown, plot_defence)
