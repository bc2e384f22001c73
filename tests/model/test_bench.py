"""The split resource bench: its row format and values on a tiny model; the acceptance bounds on SmolLM2 (slow)."""

from __future__ import annotations

import json

import pytest

from fellrec.config import ModelArgs, SplitArgs
from fellrec.model import bench
from fellrec.model.bench import COLUMNS, format_bench_table, run_bench_split, steps_per_k

KEYS = ["k", "client_param_bytes", "server_param_bytes", "full_param_bytes", "client_fraction",
        "bytes_up_per_step", "bytes_down_per_step", "step_time_split_s", "step_time_full_s", "overhead_ratio",
        "nf4_body_bytes", "bf16_body_bytes"]


# Scripted step times per arm, in call order for one k: the split arm runs a warm-up and the traffic-count step
# before its timed repeats, the full arm one warm-up (steps_per_k). The untimed steps get 1000 s, so a bench that
# counted them would be far off. Timed: split 2, 6, 3 and full 1, 2, 3 -> medians 3 and 2; the per-round ratios
# 2, 3, 1 have the median 2 (the documented overhead_ratio), while the ratio of the medians would be 1.5.
SPLIT_TIMES, FULL_TIMES = [1000.0, 1000.0, 2.0, 6.0, 3.0], [1000.0, 1.0, 2.0, 3.0]


def script_step_times(monkeypatch) -> list[str]:
    """Run every real bench step, but report the scripted time of its arm; returns the arms in call order."""
    real_step, arms = bench._step, []

    def step(loss_fn, optimizers, tick):
        real_step(loss_fn, optimizers, tick)  # the real step: traffic is counted, the adapters train
        arm = "split" if len(optimizers) == 2 else "full"  # the split arm steps the client's and server's optimizers
        times = SPLIT_TIMES if arm == "split" else FULL_TIMES
        arms.append(arm)
        return times[(arms.count(arm) - 1) % len(times)]

    monkeypatch.setattr(bench, "_step", step)
    return arms


@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_bench_rows_on_a_tiny_model(quantize, monkeypatch):
    arms = script_step_times(monkeypatch)
    rows = run_bench_split(ModelArgs(name="tiny-llama", quantize=quantize), SplitArgs(tail_layers=1), ks=(1, 2),
                           batch_size=2, seq_len=8, repeats=3)
    assert len(arms) == 2 * steps_per_k(3) and arms.count("split") == 2 * len(SPLIT_TIMES)
    assert list(COLUMNS) == KEYS and [list(r) for r in rows] == [KEYS, KEYS]
    json.dumps(rows)  # the --json form is plain JSON
    H, B, T = 64, 2, 8
    layer = 4 * 64 * 64 + 3 * 64 * 128 - 2 * 64 * 32 + 2 * 64
    full = 49152 * 64 + 4 * layer + 64
    for row, k in zip(rows, (1, 2)):
        server_layers = 4 - k - 1
        assert row["k"] == k and row["full_param_bytes"] == 4 * full
        assert row["client_param_bytes"] == 4 * (full - server_layers * layer)
        assert row["client_fraction"] == pytest.approx((full - server_layers * layer) / full)
        assert row["bf16_body_bytes"] == 2 * server_layers * layer
        # nf4 by hand: each Linear of n weights stores n/2 packed bytes and n/64 uint8 absmax values, plus a fixed
        # quant state (16-entry fp32 code 64 B, 256-entry nested code 1024 B, nested absmax 4 B, packed metadata
        # ~170 B); the two norms stay fp32. Per block n = 36864 (q, o 4096; k, v 2048; gate, up, down 8192).
        n_linear = 36864
        data = server_layers * (n_linear // 2 + n_linear // 64 + 2 * 64 * 4)
        overhead = (row["nf4_body_bytes"] - data) / (7 * server_layers)
        assert 1092 + 100 <= overhead <= 1092 + 300, overhead
        expected_server = row["nf4_body_bytes"] if quantize == "nf4" else 4 * server_layers * layer
        assert row["server_param_bytes"] == expected_server
        # Up: h_k forward and dL/dh_(n-m) backward (B x T x H fp32 each), the mask and positions (B x T int64).
        # Down: h_(n-m) forward and dL/dh_k backward.
        assert row["bytes_up_per_step"] == 2 * B * T * H * 4 + 2 * B * T * 8
        assert row["bytes_down_per_step"] == 2 * B * T * H * 4
        assert row["step_time_split_s"] == 3.0 and row["step_time_full_s"] == 2.0
        assert row["overhead_ratio"] == 2.0  # median of 2/1, 6/2, 3/3 (not 3/2, the ratio of the medians)
    table = format_bench_table(rows).splitlines()
    assert len(table) == 3 and "client frac" in table[0]
    assert all("3.000   2.000     2.000" in line for line in table[1:]), table  # split s, full s, overhead


def test_step_timer_times_the_step_and_not_the_progress_tick():
    import time

    import torch

    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1.0)

    def loss_fn():
        time.sleep(0.05)
        return (w - 1).pow(2).sum()

    elapsed = bench._step(loss_fn, [opt], tick=lambda: time.sleep(0.3))
    assert 0.05 <= elapsed < 0.3  # the sleep inside the step counts, the 0.3 s tick after it does not
    assert torch.equal(w.detach(), torch.full((3,), 2.0))  # backward and the optimizer step ran: w - lr * 2 (w - 1)
    assert w.grad is None  # zeroed for the next step


def test_bench_table_shows_the_row():
    row = dict(k=2, client_param_bytes=2048, server_param_bytes=3 * 1024 * 1024, full_param_bytes=5000,
               client_fraction=0.25, bytes_up_per_step=100, bytes_down_per_step=50, step_time_split_s=3.0,
               step_time_full_s=2.0, overhead_ratio=2.0, nf4_body_bytes=300, bf16_body_bytes=1000)
    header, line = format_bench_table([row]).splitlines()
    assert header.split() == ["k", "client", "server", "full", "client", "frac", "up/step", "down/step", "split", "s",
                              "full", "s", "overhead", "nf4", "body", "bf16", "body", "nf4/bf16"]
    # 2048 B = 2.0 KiB, 3 MiB, 5000 B = 4.9 KiB; nf4/bf16 = 300 / 1000.
    assert line.split() == ["2", "2.0", "KiB", "3.0", "MiB", "4.9", "KiB", "0.250", "100", "B", "50", "B", "3.000",
                            "2.000", "2.000", "300", "B", "1000", "B", "0.300"]


@pytest.mark.slow
def test_bench_on_smollm2_meets_the_acceptance_bounds():
    rows = run_bench_split(ModelArgs(name="smollm2-135m", quantize="nf4"), SplitArgs(head_layers=2, tail_layers=1),
                           ks=(2,), repeats=9)
    (row,) = rows
    print("\n" + format_bench_table(rows))
    assert row["client_fraction"] <= 0.35
    assert row["nf4_body_bytes"] / row["bf16_body_bytes"] <= 0.30
    assert row["overhead_ratio"] <= 1.05
