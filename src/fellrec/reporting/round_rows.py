"""What one round logs: a row per client (metrics.csv), the round's summary (rounds.csv) and the console line."""

from __future__ import annotations

from fellrec.evaluation.metrics import balance


def client_rows(round_idx: int, ids: list[int], sampled: list[int], ok: list[int], results: dict, val: dict,
                ranking: dict, num_samples: dict[int, int], uploaded_bytes: dict[int, int], gammas: dict) -> list[dict]:
    """One row per client. `results[c]` is (LocalResult, payload, signal, seconds) for the clients that trained;
    `uploaded_bytes[c]` is the size of what client c uploads when it took part (`ok`)."""
    rows = []
    for c in ids:
        result = results[c][0] if c in results else None
        rows.append({
            "round": round_idx, "client": c, "sampled": int(c in sampled), "num_samples": num_samples[c],
            "train_loss": result.train_loss if result else "", "val_loss": val[c],
            "gamma": gammas.get(c, ""), "steps": result.steps if result else 0,
            "boundary_bytes_up": result.bytes_up if result else 0,
            "boundary_bytes_down": result.bytes_down if result else 0,
            "adapter_bytes_uploaded": uploaded_bytes[c] if c in ok else 0,
            "update_norm": result.update_norm if result else "",
            "diverged": int(bool(result and result.diverged)),
            "seconds": round(results[c][3], 3) if c in results else "",
            **{f"val_{name}": value for name, value in ranking.get(c, {}).items()},
        })
    return rows


def round_summary(round_idx: int, mean: float, best_mean: float, seconds: float, stop: bool, ranking: dict) -> dict:
    """The round's row: mean validation loss, time, early stop, and the spread of validation NDCG@10 when ranked."""
    row = {"round": round_idx, "mean_val_loss": mean, "best_mean_val_loss": best_mean, "seconds": round(seconds, 3),
           "stopped_early": int(stop)}
    ndcg = {c: m["ndcg@10"] for c, m in ranking.items() if m}
    if ndcg:
        spread = balance(ndcg)
        row.update({"val_ndcg@10_std": spread["std"], "val_ndcg@10_worst": spread["min"]})
    return row


def console_line(round_idx: int, mean: float, rows: list[dict]) -> str:
    return f"round {round_idx}: mean val loss {mean:.4f} | " + "  ".join(
        f"c{r['client']} train {_fmt(r['train_loss'])} val {_fmt(r['val_loss'])}" for r in rows)


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"
