"""Round logs: the aggregation matrix's off-diagonal range in rounds.csv, the cosine matrix in similarity.csv."""

from __future__ import annotations

import csv
import sys
import types

import pytest

from fellrec.reporting.round_log import ROUND_COLUMNS, RoundLog, offdiag_range


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_offdiag_range_known_answers():
    assert offdiag_range([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.25, 0.25, 0.5]]) == pytest.approx(0.3 - 0.1)
    assert offdiag_range([[0.2] * 5] * 5) == 0.0  # the uniform FELLRec of issue 11
    assert offdiag_range([[1.0]]) is None and offdiag_range(None) is None


def test_log_round_writes_similarity_and_range(tmp_path):
    log = RoundLog(tmp_path, "disabled", "", "t", {})
    weights = [[0.6, 0.4], [0.1, 0.9]]
    log.log_round(0, [], {"round": 0, "mean_val_loss": 2.5}, weights, [3, 7], similarity=[[1.0, -0.5], [-0.5, 1.0]])
    log.log_round(1, [], {"round": 1, "mean_val_loss": 2.4}, None, [3, 7])  # a strategy without a matrix
    ranges = [r["weights_offdiag_range"] for r in rows(tmp_path / "rounds.csv")]
    assert float(ranges[0]) == pytest.approx(0.3, abs=1e-12) and ranges[1] == ""
    assert [(r["i"], r["j"], r["cosine"]) for r in rows(tmp_path / "similarity.csv")] == [
        ("3", "3", "1.0"), ("3", "7", "-0.5"), ("7", "3", "-0.5"), ("7", "7", "1.0")]
    assert [r["weight"] for r in rows(tmp_path / "weights.csv")] == ["0.6", "0.4", "0.1", "0.9"]
    log.truncate_after(0)
    assert [r["round"] for r in rows(tmp_path / "rounds.csv")] == ["0"]


def test_resumed_old_run_gets_the_new_columns(tmp_path):
    old = [c for c in ROUND_COLUMNS if c != "weights_offdiag_range"]
    with open(tmp_path / "rounds.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old)
        writer.writeheader()
        writer.writerow({"round": 0, "mean_val_loss": 2.5})
    log = RoundLog(tmp_path, "disabled", "", "t", {})
    log.log_round(1, [], {"round": 1, "mean_val_loss": 2.4}, [[0.5, 0.5], [0.2, 0.8]], [0, 1])
    got = rows(tmp_path / "rounds.csv")
    assert list(got[0]) == ROUND_COLUMNS
    assert [(r["round"], r["mean_val_loss"], r["weights_offdiag_range"]) for r in got] == [
        ("0", "2.5", ""), ("1", "2.4", "0.3")]
    assert (tmp_path / "similarity.csv").read_text().splitlines() == ["round,i,j,cosine"]


def test_wandb_gets_the_range_and_the_similarity_table(tmp_path, monkeypatch):
    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    class Run:
        def log(self, payload, step):
            self.payload, self.step = payload, step

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Table=Table))
    log = RoundLog(tmp_path, "disabled", "", "t", {})
    log.wandb = Run()
    log.log_round(2, [], {"round": 2}, [[0.7, 0.3], [0.4, 0.6]], [0, 1], similarity=[[1.0, 0.25], [0.25, 1.0]])
    payload = log.wandb.payload
    assert log.wandb.step == 2 and payload["round/weights_offdiag_range"] == pytest.approx(0.1, abs=1e-12)
    assert payload["similarity"].columns == ["i", "j", "cosine"]
    assert payload["similarity"].data == [[0, 0, 1.0], [0, 1, 0.25], [1, 0, 0.25], [1, 1, 1.0]]
    assert payload["aggregation_weights"].data[1] == [0, 1, 0.3]
