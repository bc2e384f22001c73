"""The audit's outputs: audit.md (the table and how it was made), audit.json (the same numbers), audit.png."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from fellrec.privacy.audit import ATTACKS

_LABELS = {"nn": "nearest neighbour (cosine)", "linear": "linear inverter", "mlp": "MLP inverter"}
_SHORT = {"nn": "NN", "linear": "linear", "mlp": "MLP"}


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.1f}%"


def format_table(rows: list[dict]) -> str:
    """The markdown table: one row per k, token then title recovery of each attack."""
    header = (["k"] + [f"{_SHORT[a]} token" for a in ATTACKS] + [f"{_SHORT[a]} title" for a in ATTACKS])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    for row in rows:
        cells = ([str(row["k"])] + [_pct(row[f"{a}_token_recovery"]) for a in ATTACKS]
                 + [_pct(row[f"{a}_title_recovery"]) for a in ATTACKS])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(result: dict) -> str:
    r = result
    return f"""# Privacy audit: token inversion from the hidden states h_k the server receives

Dataset `{r['dataset']}`, model `{r['model']}` ({r['num_layers']} decoder layers), victim client {r['victim_client']}. \
An honest-but-curious server sees h_k (the embeddings plus the client's first k decoder blocks, base weights, no \
adapters) for every prompt token and tries to read the item titles back.

{format_table(r['rows'])}

- **token**: fraction of the victim's title tokens decoded exactly; **title**: fraction of victim title \
occurrences whose every token is decoded exactly.
- **NN**: each h_k row decoded as the token whose input-embedding row is nearest by cosine similarity (no training).
- **linear / MLP**: inverters from h_k to the input-embedding space (a linear map; the same plus a \
{r['mlp_hidden']}-unit GELU hidden layer), decoded by cosine over the whole vocabulary, trained with cross-entropy \
and AdamW for {r['epochs']} epochs (seed {r['seed']}) on the public text only. Both start as the identity (= NN).
- **Victim text**: {r['victim_titles']} title occurrences ({r['victim_tokens']} tokens) in {r['victim_prompts']} \
real prompts of client {r['victim_client']} (one per user, seeded), rendered with the training prompt template; \
only title tokens are scored (the template is public).
- **Public text** (the attacker's training data): {r['public_titles']} titles ({r['public_tokens']} tokens): \
{r['public_text']}; laid out in the same public prompt template. None of them is the title of an item any user of \
the victim client interacted with.

Run:
- command: `{r['command']}`
- git commit: `{r['git_commit']}`
- machine: {r['machine']}
- wall time: {r['wall_s']:.0f} s
"""


def plot(result: dict, path: Path) -> Path:
    """Token recovery (left) and title recovery (right) against k, one line per attack."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no screen on these machines
    import matplotlib.pyplot as plt

    ks = [row["k"] for row in result["rows"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, unit in zip(axes, ("token", "title")):
        for attack in ATTACKS:
            ax.plot(ks, [row[f"{attack}_{unit}_recovery"] for row in result["rows"]], marker="o",
                    label=_LABELS[attack])
        ax.set(title=f"{unit} recovery from h_k", xlabel="k (decoder blocks on the client)", xticks=ks,
               ylim=(-0.03, 1.03))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction recovered exactly")
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{result['dataset']}, {result['model']}: client {result['victim_client']}'s titles")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(result: dict, out_dir: Path, stem: str = "audit", markdown=None, plotter=None) -> list[Path]:
    """STEM.md, STEM.json and STEM.png in `out_dir` (created); returns their paths. The audit's by default."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js, png = out_dir / f"{stem}.md", out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    md.write_text((markdown or _markdown)(result))
    js.write_text(json.dumps(result, indent=2) + "\n")
    (plotter or plot)(result, png)
    return [md, js, png]


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (the entry point's name, not the interpreter's path)."""
    argv = sys.argv if argv is None else argv
    return "fellrec " + shlex.join(argv[1:]) if argv else "fellrec"
