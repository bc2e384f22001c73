"""The benchmark scripts run and print what they promise (their numbers are reported, not asserted on)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_rounds_quick_json():
    result = subprocess.run([sys.executable, "experiments/bench_rounds.py", "--quick", "--json", "--train-samples",
                             "24", "--valid-samples", "12", "--repeats", "1"], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for key in ("ratio_20_vs_5", "ratio_50_vs_5", "ratio_fellrec_vs_centralized"):
        assert 0 < report[key] < 100, key
    assert set(report["round_seconds"]) == {"fellrec_5", "fellrec_20", "fellrec_50", "centralized"}


def test_bench_generation_quick_json():
    result = subprocess.run([sys.executable, "experiments/bench_generation.py", "--model", "tiny-llama", "--quantize",
                             "none", "--users", "4", "--batch-sizes", "4", "--json"], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report, "the benchmark printed an empty report"
