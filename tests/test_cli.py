"""The real `fellrec` CLI in fresh processes: data commands, config handling, bad input, the data-stage fit."""

from __future__ import annotations

import json

import pytest


def test_ml100k_stats_and_the_same_partition_in_two_processes(cli):
    args = ("data", "stats", "--config", "conf/ml100k.yaml", "--data.train_samples", "1024", "--json", "true")
    runs = [cli(*args) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    first, second = (json.loads(r.stdout) for r in runs)
    assert (first["users"], first["items"], first["interactions"]) == (943, 1682, 100000)
    assert (first["train_samples"], first["valid_samples"], first["test_samples"]) == (1024, 943, 943)
    assert len(first["clients"]) == 5 and sum(c["users"] for c in first["clients"]) == 943
    assert sum(c["train_samples"] for c in first["clients"]) == 1024
    assert first["clients"] == second["clients"]
    assert first["partition_fingerprint"] == second["partition_fingerprint"]


def test_stats_table_for_people(cli):
    result = cli("data", "stats", "--config", "conf/ml100k.yaml", "--partition.method", "iid")
    assert result.returncode == 0, result.stderr
    assert "users         943" in result.stdout and "interactions  100000" in result.stdout
    assert "# fellrec data stats: resolved config" in result.stderr and "method: iid" in result.stderr


def test_games_fixture_through_the_cli(cli, games_dir):
    result = cli("data", "stats", "--config", "conf/games.yaml", "--data.path", str(games_dir),
                 "--partition.num_clients", "3", "--json", "true")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["users"], stats["items"]) == (12, 6)
    assert (stats["train_samples"], stats["valid_samples"], stats["test_samples"], stats["test_targets"]) == (12, 4, 3, 6)
    assert stats["split"] == "given" and len(stats["clients"]) == 3


def test_preview_prints_prompts_of_one_client(cli, games_dir):
    result = cli("data", "preview", "--config", "conf/games.yaml", "--data.path", str(games_dir),
                 "--partition.num_clients", "2", "--partition.method", "iid", "--split_name", "test", "--n", "1")
    assert result.returncode == 0, result.stderr
    assert 'The user has played the following video games before: "Halo 3", ' in result.stdout
    assert result.stdout.rstrip().endswith('### Response:\n"Portal 2", "Tetris"')


def test_unknown_config_key_is_named(cli, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data:\n  sorce: csv\n")
    result = cli("data", "stats", "--config", str(config))
    assert result.returncode != 0 and "sorce" in result.stderr


def test_wrong_type_is_named(cli):
    result = cli("data", "stats", "--config", "conf/ml100k.yaml", "--partition.num_clients", "five")
    assert result.returncode != 0 and "partition.num_clients" in result.stderr


def test_missing_file_gives_one_clean_error(cli, games_dir):
    (games_dir / "id2name.txt").unlink()
    result = cli("data", "stats", "--config", "conf/games.yaml", "--data.path", str(games_dir))
    assert result.returncode == 1
    assert f"fellrec: error: {games_dir / 'id2name.txt'}: title file (id<TAB>title) not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_comes_from_the_docstrings(cli):
    result = cli("data", "stats", "--help")
    assert result.returncode == 0
    assert "Most history titles in one prompt" in result.stdout


def test_bench_split_json_on_the_tiny_model(cli):
    result = cli("bench", "split", "--config", "conf/tiny.yaml", "--ks", "[1, 2]", "--repeats", "1", "--json", "true")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert [r["k"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"k", "client_param_bytes", "server_param_bytes", "full_param_bytes", "client_fraction",
                            "bytes_up_per_step", "bytes_down_per_step", "step_time_split_s", "step_time_full_s",
                            "overhead_ratio", "nf4_body_bytes", "bf16_body_bytes"}
    # A deeper head moves blocks to the client: the server shrinks, the traffic per step does not change.
    assert rows[1]["server_param_bytes"] < rows[0]["server_param_bytes"]
    assert all(r["nf4_body_bytes"] < 0.5 * r["bf16_body_bytes"] for r in rows)
    # By hand for tiny-llama (hidden 64, 4 layers, m = 1) at the defaults batch 4 x 64 tokens: up = h_k and
    # dL/dh_(n-m) in fp32 plus the int64 mask and positions; down = h_(n-m) and dL/dh_k.
    B, T, H = 4, 64, 64
    layer = 4 * 64 * 64 + 3 * 64 * 128 - 2 * 64 * 32 + 2 * 64
    full = 49152 * 64 + 4 * layer + 64
    for r, server_layers in zip(rows, (2, 1)):
        assert (r["bytes_up_per_step"], r["bytes_down_per_step"]) == (2 * B * T * H * 4 + 2 * B * T * 8,
                                                                      2 * B * T * H * 4)
        assert r["client_fraction"] == pytest.approx((full - server_layers * layer) / full, rel=1e-12)
        assert r["server_param_bytes"] == r["nf4_body_bytes"]  # conf/tiny.yaml stores the server body in nf4
        assert r["bf16_body_bytes"] == 2 * server_layers * layer
        # One timed repeat: the median of the per-round ratios is that round's split / full.
        assert r["overhead_ratio"] == pytest.approx(r["step_time_split_s"] / r["step_time_full_s"], rel=1e-12)
