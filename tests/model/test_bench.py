"""The split resource bench: its row format and values on a tiny model; the acceptance bounds on SmolLM2 (slow)."""

from __future__ import annotations

import json

import pytest

from fellrec.config import ModelArgs, SplitArgs
from fellrec.model.bench import COLUMNS, format_bench_table, run_bench_split

KEYS = ["k", "client_param_bytes", "server_param_bytes", "full_param_bytes", "client_fraction",
        "bytes_up_per_step", "bytes_down_per_step", "step_time_split_s", "step_time_full_s", "overhead_ratio",
        "nf4_body_bytes", "bf16_body_bytes"]


@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_bench_rows_on_a_tiny_model(quantize):
    rows = run_bench_split(ModelArgs(name="tiny-llama", quantize=quantize), SplitArgs(tail_layers=1), ks=(1, 2),
                           batch_size=2, seq_len=8, repeats=2)
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
        assert 0.2 < row["nf4_body_bytes"] / row["bf16_body_bytes"] < 0.4
        expected_server = row["nf4_body_bytes"] if quantize == "nf4" else 4 * server_layers * layer
        assert row["server_param_bytes"] == expected_server
        assert row["bytes_up_per_step"] == 2 * B * T * H * 4 + 2 * B * T * 8
        assert row["bytes_down_per_step"] == 2 * B * T * H * 4
        assert row["step_time_split_s"] > 0 and row["step_time_full_s"] > 0
        assert row["overhead_ratio"] > 0
    table = format_bench_table(rows)
    assert len(table.splitlines()) == 3 and "client frac" in table.splitlines()[0]


@pytest.mark.slow
def test_bench_on_smollm2_meets_the_acceptance_bounds():
    rows = run_bench_split(ModelArgs(name="smollm2-135m", quantize="nf4"), SplitArgs(head_layers=2, tail_layers=1),
                           ks=(2,), repeats=9)
    (row,) = rows
    print("\n" + format_bench_table(rows))
    assert row["client_fraction"] <= 0.35
    assert row["nf4_body_bytes"] / row["bf16_body_bytes"] <= 0.30
    assert row["overhead_ratio"] <= 1.05
