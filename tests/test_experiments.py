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


def test_bench_lm_head_json_both_losses_agree():
    result = subprocess.run([sys.executable, "experiments/bench_lm_head.py", "--model", "tiny-llama", "--quantize",
                             "none", "--micro-batches", "2", "--micro-batch-size", "2", "--repeats", "2", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert (report["samples"], report["repeats"]) == (4, 2)
    # The head at labelled positions only is the same loss as the head over every position (fp32, same dropout).
    assert report["loss_difference"] < 1e-4
    assert report["speedup"] == pytest.approx(
        report["labelled_only_samples_per_s"] / report["every_position_samples_per_s"], rel=1e-12)
    assert report["bf16_speedup"] == pytest.approx(
        report["labelled_only_bf16_samples_per_s"] / report["labelled_only_samples_per_s"], rel=1e-12)


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
    # By hand for conf/ml100k-generative.yaml with --quick: tiny-llama (hidden 64, 4 layers, m = 1, nf4 server
    # body), batch 4 (train.micro_batch_size) x 64 tokens, LoRA r 8 on q_proj (64 -> 64) and v_proj (64 -> 32) in fp32.
    assert (report["batch_size"], report["seq_len"], report["lora_r"], report["lora_targets"]) == \
        (4, 64, 8, ["q_proj", "v_proj"])
    assert report["steps_per_round"] == 5  # ceil(96 samples / 5 clients x 1 epoch / batch 4)
    B, T, H, MIB = 4, 64, 64, 1024 ** 2
    layer = 4 * 64 * 64 + 3 * 64 * 128 - 2 * 64 * 32 + 2 * 64
    full = 49152 * 64 + 4 * layer + 64
    step_bytes = (2 * B * T * H * 4 + 2 * B * T * 8) + 2 * B * T * H * 4  # up (h, grad, mask, positions) + down
    for row, table_row in zip(report["rows"], values):
        k = row["k"]
        client_layers = k + 1
        adapter = client_layers * 4 * 8 * ((64 + 64) + (64 + 32))  # A r x in + B out x r, q and v, per client block
        assert row["client_param_bytes"] == 4 * (full - (4 - client_layers) * layer)
        assert row["client_mib"] == pytest.approx(row["client_param_bytes"] / MIB, rel=1e-12)
        assert row["kib_per_step"] == pytest.approx(step_bytes / 1024, rel=1e-12)
        assert row["adapter_bytes_up_per_round"] == adapter
        assert row["kib_per_round"] == pytest.approx((5 * step_bytes + adapter) / 1024, rel=1e-12)
        assert row["overhead_ratio"] == pytest.approx(row["split_ms"] / row["unsplit_ms"], rel=1e-12)  # 1 repeat
        # The markdown table shows these numbers, rounded as its header says.
        shown = dict(zip(header, table_row))
        assert shown["client memory (MiB)"] == round(row["client_mib"], 2)
        assert shown["KiB up+down / step"] == round(step_bytes / 1024, 1)
        assert shown["adapter up (KiB)"] == round(adapter / 1024, 1)
        assert shown["overhead ratio"] == round(row["overhead_ratio"], 3)
    assert (tmp_path / "resources.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def test_bench_train_json_compares_the_old_and_the_default_configuration():
    result = subprocess.run([sys.executable, "experiments/bench_train.py", "--model", "tiny-llama", "--samples", "4",
                             "--repeats", "1", "--eval-users", "4", "--generate-users", "1", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["speedup"] == pytest.approx(report["default_samples_per_s"] / report["baseline_samples_per_s"],
                                              rel=1e-12)
    assert {"score_eval_users_per_s", "generate_eval_users_per_s"} <= set(report)
    assert (report["objective"], report["baseline_quantize"], report["ranked_users"]) == ("score", "nf4", 4)
    # The compact prompt is shorter than BIGRec's template by its ~60 tokens of instructions.
    assert report["baseline_mean_tokens"] - report["default_mean_tokens"] > 40
