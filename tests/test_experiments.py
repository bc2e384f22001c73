"""The benchmark scripts run and print what they promise (their numbers are reported, not asserted on)."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
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


def test_compare_quick_writes_runs_users_and_claims(tmp_path):
    command = [sys.executable, "experiments/compare.py", "--quick", "--methods", "FELLRec", "FedAvg", "SASRec local",
               "--partitions", "kmeans", "--seeds", "42", "1", "--no-generative", "--bootstrap", "200",
               "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "compare.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"{c} in compare.json is not strict JSON"))
    runs = {(r["method"], r["seed"]): r for r in report["runs"]}
    assert set(runs) == {(m, s) for m in ("FELLRec", "FedAvg", "SASRec local") for s in (42, 1)}
    fellrec_dir = tmp_path / "runs" / "quick" / "score-kmeans-s1-fellrec"
    results = json.loads((fellrec_dir / "results.json").read_text())
    assert runs["FELLRec", 1]["ndcg@10"] == results["overall"]["ndcg@10"]  # the table shows the run's numbers
    assert runs["FELLRec", 1]["users"] == runs["SASRec local", 1]["users"] == 60  # every test user, both kinds
    with open(fellrec_dir / "test_users.csv") as f:  # the per-user rows average to the run's overall value
        per_user = [float(row["ndcg@10"]) for row in csv.DictReader(f)]
    assert statistics.fmean(per_user) == pytest.approx(results["overall"]["ndcg@10"], abs=1e-9)
    assert "weights_offdiag_range" in runs["FELLRec", 42] and "weights_offdiag_range" not in runs["FedAvg", 42]
    assert [(c["claim"], c["seeds"]) for c in report["claims"]] == [
        ("FELLRec above FedAvg", [1, 42]), ("FELLRec's clients more even than FedAvg's", [1, 42])]
    markdown = (tmp_path / "out" / "compare.md").read_text()
    assert "| Popularity |" in markdown and "| SASRec local | sasrec | 2 | 60 |" in markdown
    assert (tmp_path / "out" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shutil.rmtree(tmp_path / "runs")  # a later sitting on a fresh clone: only the saved rows are left
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0  # finished runs (and SASRec's rows) are reused from compare_runs/, not redone
    assert not (tmp_path / "runs" / "quick" / "score-kmeans-s1-fellrec").exists()
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["runs"] == report["runs"]
    sasrec_file = tmp_path / "out" / "compare_runs" / "sasrec-kmeans-s42.json"
    saved = sasrec_file.read_text()
    subset = [*command[:4], "FELLRec", *command[command.index("--partitions"):]]  # a sitting without SASRec
    assert subprocess.run(subset, cwd=REPO, capture_output=True, text=True, timeout=300).returncode == 0
    assert sasrec_file.read_text() == saved  # its saved rows are kept for the next full sitting
    # A sitting that stops at once, with the first planned run's row gone: it runs nothing, and the saved rows
    # planned after the stopping point still make the report.
    (tmp_path / "out" / "compare_runs" / "score-kmeans-s42-fellrec.json").unlink()
    stopped = subprocess.run([*command, "--stop-after", "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 0 and "no runs from score-kmeans-s42-fellrec on" in stopped.stderr
    kept = {(r["method"], r["seed"]) for r in json.loads((tmp_path / "out" / "compare.json").read_text())["runs"]}
    assert kept == set(runs) - {("FELLRec", 42)}


def _user_rows(method: str, seed: int, values: dict[str, tuple[int, float]]) -> dict:
    per_user = [{"user": u, "client": str(c), "ndcg@10": str(v)} for u, (c, v) in values.items()]
    return {"method": method, "partition": "kmeans", "seed": seed, "objective": "score", "per_user": per_user}


def test_claims_on_hand_made_users():
    """Two clients of two users. FELLRec is FedAvg plus 0.1 for every user in both seeds -> +0.1 with a CI of width
    0, holds; FELLRec equals Local -> 0, cannot tell. FedAvg (plus 0.1) has clients averaging 0.3 and 0.7 (std 0.2), FELLRec's 0.5
    and 0.5 after pooling its seeds (std 0) -> the balance claim holds at +0.2."""
    sys.path.insert(0, str(REPO / "experiments"))
    from compare import claims

    fedavg = {"a": (0, 0.1), "b": (0, 0.3), "c": (1, 0.5), "d": (1, 0.7)}
    fellrec = {u: (c, v + 0.1) for u, (c, v) in fedavg.items()}
    even = {42: {"a": (0, 0.3), "b": (0, 0.3), "c": (1, 0.7), "d": (1, 0.7)},
            1: {"a": (0, 0.7), "b": (0, 0.7), "c": (1, 0.3), "d": (1, 0.3)}}
    rows = [_user_rows("FedAvg", s, fedavg) for s in (42, 1)] + [_user_rows("FELLRec", s, fellrec) for s in (42, 1)]
    rows += [_user_rows("Local", s, fellrec) for s in (42, 1)]
    out = {c["claim"]: c for c in claims(rows, ["kmeans"], resamples=200)}
    assert out["FELLRec above FedAvg"]["mean_diff"] == pytest.approx(0.1)
    assert out["FELLRec above FedAvg"]["ci95"] == pytest.approx([0.1, 0.1])
    assert out["FELLRec above FedAvg"]["verdict"] == "holds"
    assert (out["FELLRec above Local"]["mean_diff"], out["FELLRec above Local"]["verdict"]) == (0.0, "cannot tell")
    rows = [_user_rows("FedAvg", s, {u: (c, v + 0.1) for u, (c, v) in fedavg.items()}) for s in (42, 1)]
    rows += [_user_rows("FELLRec", s, even[s]) for s in (42, 1)]
    balance = claims(rows, ["kmeans"], resamples=200)[-1]
    assert balance["claim"] == "FELLRec's clients more even than FedAvg's"
    assert balance["mean_diff"] == pytest.approx(0.2) and balance["verdict"] == "holds"
    assert balance["ci95"][0] > 0


def test_bench_train_json_compares_the_old_and_the_default_configuration():
    result = subprocess.run([sys.executable, "experiments/bench_train.py", "--model", "tiny-llama", "--samples", "4",
                             "--repeats", "1", "--eval-users", "4", "--generate-users", "1", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["speedup"] == pytest.approx(report["default_samples_per_s"] / report["baseline_samples_per_s"],
                                              rel=1e-12)
    # The default config trains dense blocks and ranks in int8: dense ranking is the arm measured beside it, and
    # its training, the same as the default's, is not timed twice.
    assert {"score_eval_users_per_s", "generate_eval_users_per_s", "dense_score_eval_users_per_s"} <= set(report)
    assert "dense_samples_per_s" not in report
    assert (report["objective"], report["default_quantize"], report["baseline_quantize"], report["ranked_users"]) == (
        "score", "none", "nf4", 4)
    # The compact prompt without years is shorter than BIGRec's template by its ~60 tokens of instructions and by
    # the 6 tokens of each title's "(1995)".
    assert report["baseline_mean_tokens"] - report["default_mean_tokens"] > 40 + 6 * 5


def test_paired_runs_known_difference(tmp_path):
    """Set A scores every user 0.1 above set B, seed by seed: the mean difference is 0.1 and so is every resample.
    A user only B ran (u9) and a seed only A ran (7) are left out."""
    users = [("u1", 0, 0.5), ("u2", 0, 0.0), ("u3", 1, 0.25)]
    b_rows = []
    for seed in (42, 1):
        run = tmp_path / f"a-s{seed}"
        run.mkdir()
        (run / "config.yaml").write_text(f"train:\n  seed: {seed}\n")
        with open(run / "test_users.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["user", "client", "ndcg@10", "recall@10"])
            writer.writerows([(u, c, v + 0.1 + seed / 1000, 0.0) for u, c, v in users])
        row = {"seed": seed, "per_user": [{"user": u, "client": c, "ndcg@10": v + seed / 1000} for u, c, v in
                                          [*users, ("u9", 1, 0.9)]]}
        b_rows.append(tmp_path / f"b-s{seed}.json")
        b_rows[-1].write_text(json.dumps(row))
    extra = tmp_path / "a-s7"
    shutil.copytree(tmp_path / "a-s1", extra)
    (extra / "config.yaml").write_text("train:\n  seed: 7\n")
    result = subprocess.run([sys.executable, "experiments/paired_runs.py", "--a", str(tmp_path / "a-s42"),
                             str(tmp_path / "a-s1"), str(extra), "--b", *map(str, b_rows), "--bootstrap", "50"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert (report["users"], report["seeds"], report["users_changed"]) == (3, [1, 42], 3)
    assert report["mean_diff"] == pytest.approx(0.1)
    assert report["ci95"] == pytest.approx([0.1, 0.1])
    assert report["b_ndcg@10"] == pytest.approx((0.5 + 0.0 + 0.25) / 3 + 0.043 / 2)
