"""Per-round numbers: CSV files in the run directory always, and W&B (offline unless the user is logged in)."""

from __future__ import annotations

import csv
import os
import secrets
from pathlib import Path
from typing import Optional

CLIENT_COLUMNS = ["round", "client", "sampled", "num_samples", "train_loss", "val_loss", "gamma", "steps",
                  "boundary_bytes_up", "boundary_bytes_down", "adapter_bytes_uploaded", "update_norm", "diverged",
                  "seconds", "val_recall@10", "val_ndcg@10"]
ROUND_COLUMNS = ["round", "mean_val_loss", "best_mean_val_loss", "seconds", "stopped_early", "val_ndcg@10_std",
                 "val_ndcg@10_worst", "weights_offdiag_range"]


def offdiag_range(matrix: Optional[list[list[float]]]) -> Optional[float]:
    """max - min of a square matrix's off-diagonal entries: 0 means every client weighs every other alike (the
    uniform FELLRec of issue 11); None without a matrix or with a single client."""
    if matrix is None:
        return None
    values = [v for i, row in enumerate(matrix) for j, v in enumerate(row) if i != j]
    return max(values) - min(values) if values else None


class RoundLog:
    """metrics.csv (one row per round and client), rounds.csv (one per round, with the aggregation matrix's
    off-diagonal range), weights.csv (the aggregation matrix, one row per round and (i, j) entry) and similarity.csv
    (the strategy's cosine matrix, same layout; empty for strategies that compare nothing)."""

    def __init__(self, run_dir: Path, wandb_mode: str, project: str, name: str, config: dict):
        self.run_dir = run_dir
        self.files = {"metrics": (run_dir / "metrics.csv", CLIENT_COLUMNS),
                      "rounds": (run_dir / "rounds.csv", ROUND_COLUMNS),
                      "weights": (run_dir / "weights.csv", ["round", "i", "j", "weight"]),
                      "similarity": (run_dir / "similarity.csv", ["round", "i", "j", "cosine"])}
        for path, columns in self.files.values():
            if not path.exists():
                _write_rows(path, columns, [], header=True)
            else:  # a run resumed from an older version: rewrite under today's columns, not misaligned appends
                _upgrade_header(path, columns)
        self.wandb = _start_wandb(run_dir, wandb_mode, project, name, config)

    def truncate_after(self, round_idx: int) -> None:
        """Drop rows of rounds after `round_idx` (a resumed run redoes them)."""
        for path, columns in self.files.values():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["round"]) <= round_idx]
            _write_rows(path, columns, rows, header=True)

    def log_round(self, round_idx: int, client_rows: list[dict], round_row: dict,
                  weights: Optional[list[list[float]]], weight_ids: list[int],
                  similarity: Optional[list[list[float]]] = None) -> None:
        """One round's rows. ``weights`` and ``similarity`` are C x C (rows and columns: ``weight_ids``); the
        weights' off-diagonal range is added to the round row here, so every caller logs it the same way."""
        round_row = {**round_row, "weights_offdiag_range": offdiag_range(weights)}
        _write_rows(*self.files["metrics"], client_rows)
        _write_rows(*self.files["rounds"], [round_row])
        _write_rows(*self.files["weights"], _matrix_rows(round_idx, weights, weight_ids, "weight"))
        _write_rows(*self.files["similarity"], _matrix_rows(round_idx, similarity, weight_ids, "cosine"))
        if self.wandb is not None:
            self._log_wandb(round_idx, client_rows, round_row, weights, weight_ids, similarity)

    def _log_wandb(self, round_idx, client_rows, round_row, weights, weight_ids, similarity=None) -> None:
        import wandb

        payload = {f"round/{k}": v for k, v in round_row.items() if k != "round" and v is not None}
        for row in client_rows:
            for key in ("train_loss", "val_loss", "gamma", "boundary_bytes_up", "adapter_bytes_uploaded",
                        "val_recall@10", "val_ndcg@10"):
                if row.get(key) not in (None, ""):
                    payload[f"client_{row['client']}/{key}"] = row[key]
        for key, matrix, column in (("aggregation_weights", weights, "weight"), ("similarity", similarity, "cosine")):
            if matrix is not None:
                rows = _matrix_rows(round_idx, matrix, weight_ids, column)
                payload[key] = wandb.Table(columns=["i", "j", column], data=[[r["i"], r["j"], r[column]] for r in rows])
        self.wandb.log(payload, step=round_idx)

    def log_images(self, paths: list[Path]) -> None:
        """Attach the run's PNG plots to the W&B run."""
        if self.wandb is not None:
            import wandb

            self.wandb.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in paths})

    def log_results(self, results: dict, metrics: tuple[str, ...] = ("recall@10", "ndcg@10", "hr@10")) -> None:
        """The final evaluation in W&B: a per-client table, a bar chart of NDCG@10 per client (popularity beside it
        in the table), and the overall, balance and popularity figures in the run summary."""
        if self.wandb is None:
            return
        import wandb

        popular = {row["client"]: row for row in results["popularity_clients"]}
        table = wandb.Table(columns=["client", "users", *metrics, "popularity ndcg@10"],
                            data=[[row["client"], row["users"], *(row[m] for m in metrics),
                                   popular[row["client"]]["ndcg@10"]] for row in results["clients"]])
        self.wandb.log({"test/clients": table,
                        "test/ndcg@10_per_client": wandb.plot.bar(table, "client", "ndcg@10",
                                                                  title="test NDCG@10 per client")})
        for section in ("overall", "popularity"):
            for name, value in results[section].items():
                self.wandb.summary[f"test/{section}/{name}"] = value
        for name, figures in results["balance"].items():
            for figure, value in figures.items():
                self.wandb.summary[f"test/balance/{name}/{figure}"] = value

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def _matrix_rows(round_idx: int, matrix: Optional[list[list[float]]], ids: list[int], column: str) -> list[dict]:
    """A C x C matrix as one row per (i, j) entry; none without a matrix."""
    if matrix is None:
        return []
    return [{"round": round_idx, "i": a, "j": b, column: matrix[x][y]}
            for x, a in enumerate(ids) for y, b in enumerate(ids)]


def _upgrade_header(path: Path, columns: list[str]) -> None:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames == columns:
            return
        rows = list(reader)
    _write_rows(path, columns, rows, header=True)


def _write_rows(path: Path, columns: list[str], rows: list[dict], header: bool = False) -> None:
    with open(path, "w" if header else "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if header:
            writer.writeheader()
        writer.writerows(rows)


def _start_wandb(run_dir: Path, mode: str, project: str, name: str, config: dict):
    if mode == "disabled":
        return None
    import wandb  # lazily: the core runs without it

    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(project=project, name=name, dir=str(run_dir), mode=mode, config=config,
                      id=_run_id(run_dir), resume="allow")


def _run_id(run_dir: Path) -> str:
    """One W&B run per run directory, so a resumed run continues the same W&B run."""
    id_file = run_dir / "wandb_id.txt"
    if not id_file.exists():
        id_file.write_text(secrets.token_hex(4))
    return id_file.read_text().strip()
