"""The real `fellrec` CLI in fresh processes: data commands, config handling, bad input, the data-stage fit."""

from __future__ import annotations

import json

import yaml


def test_ml100k_stats_and_the_same_partition_in_two_processes(cli):
    runs = [cli("data", "stats", "--config", "conf/ml100k.yaml", "--json", "true") for _ in range(2)]
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


def test_fit_stops_after_the_data_stage_and_says_so(cli, csv_dir, tmp_path):
    result = cli("fit", "--config", "conf/ml100k.yaml", "--data.source", "csv", "--data.path", str(csv_dir),
                 "--partition.num_clients", "2", "--out_dir", str(tmp_path / "runs"), "--name", "tiny")
    assert result.returncode == 0, result.stderr
    assert "Nothing was trained" in result.stdout
    run_dir = tmp_path / "runs" / "tiny"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["source"] == "csv" and saved["partition"]["num_clients"] == 2
    assert json.loads((run_dir / "data_stats.json").read_text())["interactions"] == 30
    assert set(json.loads((run_dir / "partition.json").read_text()).values()) == {0, 1}


def test_help_comes_from_the_docstrings(cli):
    result = cli("data", "stats", "--help")
    assert result.returncode == 0
    assert "Most history titles in one prompt" in result.stdout
