"""The benchmark scripts run and print what they promise (their numbers are reported, not asserted on)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_bench_rounds_quick_json():
    result = subprocess.run([sys.executable, "experiments/bench_rounds.py", "--quick", "--json", "--train-samples",
                             "24", "--valid-samples", "12", "--repeats", "1"], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    seconds = report["round_seconds"]
    assert set(seconds) == {"fellrec_5", "fellrec_20", "fellrec_50", "centralized"}
    # Each ratio is the quotient of the two reported round times (numerator first).
    quotients = {"ratio_20_vs_5": ("fellrec_20", "fellrec_5"), "ratio_50_vs_5": ("fellrec_50", "fellrec_5"),
                 "ratio_fellrec_vs_centralized": ("fellrec_5", "centralized")}
    for key, (top, bottom) in quotients.items():
        assert report[key] == pytest.approx(seconds[top] / seconds[bottom], rel=1e-12), key
    # One repeat: each reported time is that timed round, the one printed as "repeat 1 <set-up>: X.XX s" (the
    # untimed warm-up round is not printed).
    printed = dict(re.findall(r"^repeat 1 (\w+): ([0-9.]+) s$", result.stderr, flags=re.M))
    assert set(printed) == set(seconds)
    for name, value in seconds.items():
        assert abs(value - float(printed[name])) <= 0.005 + 1e-9, (name, value, printed[name])
    assert (report["repeats"], report["train_samples"], report["model"]) == (1, 24, "tiny-llama")


def test_bench_generation_quick_json():
    result = subprocess.run([sys.executable, "experiments/bench_generation.py", "--model", "tiny-llama", "--quantize",
                             "none", "--users", "4", "--batch-sizes", "4", "--json"], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert (report["users"], report["repeats"], report["model"]) == (4, 2, "tiny-llama")
    one, batch = report["one_at_a_time"], report["batch_4"]
    for arm in (one, batch):  # the fastest of the repeats counts, and the throughput is users over those seconds
        assert len(arm["all_seconds"]) == 2 and arm["seconds"] == min(arm["all_seconds"])
        assert arm["users_per_second"] == pytest.approx(4 / arm["seconds"], rel=1e-12)
    assert batch["ratio"] == pytest.approx(one["seconds"] / batch["seconds"], rel=1e-12)
    assert report["ratio"] == batch["ratio"]  # the best (here the only) batch size
    assert batch["same_titles"] == 4  # batching (left padding, position ids) must not change what beam search writes
    assert report["item_embedding"]["items"] == 1682  # every ML-100K title


def test_resources_quick_writes_table_and_plot(tmp_path):
    result = subprocess.run([sys.executable, "experiments/resources.py", "--quick", "--json", "--out", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert [r["k"] for r in report["rows"]] == [1, 2]
    table = [line for line in (tmp_path / "resources.md").read_text().splitlines() if line.startswith("|")]
    header, rows = [c.strip() for c in table[0].strip("|").split("|")], table[2:]
    assert len(rows) == 2, table
    values = [[float(c) for c in row.strip("|").split("|")] for row in rows]
    assert all(len(v) == len(header) for v in values)
    assert [v[0] for v in values] == [1, 2]
    memory = header.index("client memory (MiB)")
    assert values[0][memory] < values[1][memory]
    assert report["rows"][0]["client_param_bytes"] < report["rows"][1]["client_param_bytes"]
    assert (tmp_path / "resources.png").stat().st_size > 0


def test_compare_quick_writes_the_comparison(tmp_path):
    methods = ["FedAvg", "FELLRec", "Local"]
    result = subprocess.run([sys.executable, "experiments/compare.py", "--quick", "--methods", *methods,
                             "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "compare.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"{c} in compare.json is not strict JSON"))
    methods_seen = report["partitions"]["kmeans"]
    assert list(methods_seen) == [*methods, "Popularity"]
    for row in methods_seen.values():
        assert all(0 <= row[f"ndcg@{k}"][0] <= 1 for k in (5, 10, 20)) and len(row["clients"]) == 3
    runs = tmp_path / "runs" / "quick"
    fellrec = json.loads((runs / "kmeans-s42-fellrec" / "results.json").read_text())
    assert methods_seen["FELLRec"]["ndcg@10"][0] == fellrec["overall"]["ndcg@10"]  # the table shows the run's numbers
    assert methods_seen["Popularity"]["ndcg@10"][0] == fellrec["popularity"]["ndcg@10"]
    assert methods_seen["FELLRec"]["val_loss"][0] > 0 and methods_seen["Popularity"]["val_loss"] == [None, None]
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert "| FELLRec |" in markdown and "| Popularity |" in markdown and "Claim 1" in markdown
    assert "commit:" in markdown and "machine:" in markdown
    assert (tmp_path / "out" / "compare_kmeans.png").stat().st_size > 10_000
    again = subprocess.run([sys.executable, "experiments/compare.py", "--quick", "--methods", *methods,
                            "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads((tmp_path / "out" / "compare.json").read_text()) \
        ["partitions"] == report["partitions"]  # finished runs are reused, not redone
