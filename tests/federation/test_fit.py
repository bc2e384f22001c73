"""`fellrec fit` end to end through the real CLI on a tiny model: outputs, resume after a kill, two processes."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TINY = ["--config", "conf/tiny.yaml"]


def fit(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fellrec", "fit", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def adapters(round_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(round_dir.glob("adapters/client_*/*/adapter_model.safetensors")):
        for name, t in load_file(str(file)).items():
            tensors[f"{file.parent.parent.name}/{file.parent.name}/{name}"] = t
    return tensors


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def hand_gammas(signals: dict[int, float], t: int, alpha=0.7, beta=5.0, temperature=0.05) -> list[float]:
    """gamma_i = tanh(alpha / softmax_i(l / T) ** ((t + 1) / beta)), clients in id order (METHOD.md section 4)."""
    ids = sorted(signals)
    top = max(signals.values())
    e = [math.exp((signals[c] - top) / temperature) for c in ids]
    return [math.tanh(alpha / (x / sum(e)) ** ((t + 1) / beta)) for x in e]


def assert_consistent_report(results: dict) -> None:
    """Relations a wrong evaluation report breaks (the tiny random model's own metrics are mostly 0, so these are
    checked on the popularity rows too, which have hits at 20): overall = the user-weighted mean of the clients;
    ML-100K test users have one target each, so recall@k = hr@k and precision@k = hr@k / k for every client."""
    for overall, clients in ((results["overall"], results["clients"]),
                             (results["popularity"], results["popularity_clients"])):
        users = sum(c["users"] for c in clients)
        for name, value in overall.items():
            assert value == pytest.approx(sum(c[name] * c["users"] for c in clients) / users, abs=1e-12), name
        for c in clients:
            for k in (5, 10, 20):
                assert c[f"recall@{k}"] == c[f"hr@{k}"] and c[f"precision@{k}"] == pytest.approx(c[f"hr@{k}"] / k)
        for name, figures in results["balance"].items():
            assert figures["min"] == min(c[name] for c in results["clients"])
    assert any(c["hr@20"] > 0 for c in results["popularity_clients"])  # the relations above are not all 0 == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted 3-round FELLRec run, shared by the tests below."""
    out = tmp_path_factory.mktemp("reference")
    result = fit(*TINY, "--out_dir", str(out), "--fed.rounds", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    (out / "stdout.txt").write_text(result.stdout)
    return out / "tiny"


def test_fit_writes_rounds_logs_and_personalised_adapters(reference):
    metrics = rows(reference / "metrics.csv")
    assert [(int(r["round"]), int(r["client"])) for r in metrics] == [(t, c) for t in range(3) for c in range(3)]
    for r in metrics:
        assert int(r["boundary_bytes_up"]) > int(r["boundary_bytes_down"]) > 0  # up also carries mask + positions
        assert int(r["adapter_bytes_uploaded"]) > 0 and int(r["steps"]) >= 1
        assert float(r["update_norm"]) > 0
    # The logged gammas are the heating of the logged training losses (METHOD.md section 4, written out here).
    gamma = {(int(r["round"]), int(r["client"])): float(r["gamma"]) for r in metrics}
    for t in range(3):
        losses = {int(r["client"]): float(r["train_loss"]) for r in metrics if int(r["round"]) == t}
        assert [gamma[(t, c)] for c in range(3)] == pytest.approx(hand_gammas(losses, t), rel=1e-9)
    # The heating raises every client's gamma from round to round.
    assert all(gamma[(2, c)] > gamma[(0, c)] for c in range(3))
    # The logged weights are A_ii = 1, A_ij = gamma_i (s_ij + 1) / 2, rows normalised. So A_ij / (A_ii gamma_i) is
    # (s_ij + 1) / 2, which is symmetric in i and j: a gamma given to the wrong row or client breaks that.
    weights = {(int(w["round"]), int(w["i"]), int(w["j"])): float(w["weight"]) for w in rows(reference / "weights.csv")}
    assert len(weights) == 3 * 3 * 3
    s_hat = {(t, i, j): weights[(t, i, j)] / (weights[(t, i, i)] * gamma[(t, i)])
             for t in range(3) for i in range(3) for j in range(3) if i != j}
    for (t, i, j), value in s_hat.items():
        assert value == pytest.approx(s_hat[(t, j, i)], rel=1e-9), (t, i, j)
        assert 0.0 <= value <= 1.0 + 1e-12
    # Where the run logs its cosines, the weights follow from them exactly.
    cosine = {(int(w["round"]), int(w["i"]), int(w["j"])): float(w["cosine"])
              for w in rows(reference / "similarity.csv")}
    assert len(cosine) == 3 * 3 * 3  # fed.similarity_on (update by default) reaches the logs every round
    for (t, i, j), c in cosine.items():
        if i != j:
            assert s_hat[(t, i, j)] == pytest.approx((c + 1) / 2, rel=1e-9), (t, i, j)
    # The logged off-diagonal spread of each round's weights, recomputed from weights.csv.
    for r in rows(reference / "rounds.csv"):
        t = int(r["round"])
        off = [w for (u, i, j), w in weights.items() if u == t and i != j]
        assert float(r["weights_offdiag_range"]) == pytest.approx(max(off) - min(off), rel=1e-6)
    losses = [float(r["mean_val_loss"]) for r in rows(reference / "rounds.csv")]
    assert losses[2] < losses[0]  # training helps the validation loss
    final = adapters(reference / "round_002")
    a = final["client_0/client_side/base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    b = final["client_1/client_side/base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert a.abs().sum() > 0 and not torch.equal(a, b)  # trained, and personalised per client
    assert (reference / "best" / "client_0" / "server_side" / "adapter_model.safetensors").is_file()
    assert (reference / "rounds.png").stat().st_size > 10_000 and (reference / "weights.png").is_file()


def test_fit_ends_with_the_test_evaluation_of_the_best_adapters(reference):
    text = (reference / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in results.json is not strict JSON"))
    assert {"overall", "clients", "balance", "popularity"} <= set(results)
    assert [(c["client"], c["users"]) for c in results["clients"]] == [(0, 4), (1, 4), (2, 4)]  # eval.users_per_client
    assert_consistent_report(results)
    best = json.loads((reference / "best" / "best.json").read_text())["best_round"]
    assert results["best_round"] == best and results["speed"]["users_per_second"] > 0
    assert [int(r["client"]) for r in rows(reference / "results.csv")] == [0, 1, 2]
    assert "popularity_ndcg@10" in rows(reference / "results.csv")[0]
    assert (reference / "clients_ndcg10.png").stat().st_size > 5_000
    stdout = (reference.parent / "stdout.txt").read_text()
    assert "pop ndcg@10" in stdout and "balance of ndcg@10" in stdout and "users/s" in stdout


def test_ranking_signal_drives_the_heating_and_is_logged_each_round(reference, tmp_path):
    result = fit(*TINY, "--out_dir", str(tmp_path), "--fed.rounds", "2", "--fed.signal", "ndcg", "--eval.final",
                 "false", "--eval.val_users_per_client", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "tiny"
    metrics = rows(run_dir / "metrics.csv")
    assert len(metrics) == 6
    for t in range(2):  # the heating of 1 - NDCG@10 on each client's validation users
        ndcg = {int(r["client"]): float(r["val_ndcg@10"]) for r in metrics if int(r["round"]) == t}
        got = [float(r["gamma"]) for r in metrics if int(r["round"]) == t]
        assert got == pytest.approx(hand_gammas({c: 1 - v for c, v in ndcg.items()}, t), rel=1e-9)
    assert all(r["val_ndcg@10_std"] != "" for r in rows(run_dir / "rounds.csv"))
    # Round 0 trains exactly as the reference run (same seeds); only the heating's signal differs, so the gammas must.
    gammas = [float(r["gamma"]) for r in metrics if r["round"] == "0"]
    reference_gammas = [float(r["gamma"]) for r in rows(reference / "metrics.csv") if r["round"] == "0"]
    assert gammas != pytest.approx(reference_gammas)
    assert not (run_dir / "results.json").exists()  # eval.final false


def test_update_clipping_bounds_every_uploaded_update(reference, tmp_path):
    # LoRA B starts at zero, so its norm after one round is at most the norm of the whole (clipped) update.
    def b_norm(round_dir: Path, client: int) -> float:
        return sum(float(t.pow(2).sum()) for name, t in adapters(round_dir).items()
                   if name.startswith(f"client_{client}/") and "lora_B" in name) ** 0.5

    result = fit(*TINY, "--out_dir", str(tmp_path), "--fed.rounds", "1", "--fed.strategy", "local",
                 "--privacy.clip_norm", "1e-4", "--eval.final", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    norms = [float(r["update_norm"]) for r in rows(tmp_path / "tiny" / "metrics.csv")]
    assert all(n > 1e-3 for n in norms)  # the logged norm is the one before clipping
    for c in range(3):
        assert 0 < b_norm(tmp_path / "tiny" / "round_000", c) <= 1e-4 * (1 + 1e-4)
        assert b_norm(reference / "round_000", c) > 1e-3  # without clipping the same training moves it further


def test_fedavg_gives_every_client_the_same_adapter(tmp_path):
    result = fit(*TINY, "--out_dir", str(tmp_path), "--fed.strategy", "fedavg", "--fed.rounds", "1", "--name", "avg")
    assert result.returncode == 0, result.stderr[-3000:]
    final = adapters(tmp_path / "avg" / "round_000")
    name = "client_side/base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    assert final[f"client_0/{name}"].abs().sum() > 0
    assert torch.equal(final[f"client_0/{name}"], final[f"client_2/{name}"])


def test_fedprox_with_mu_0_and_kept_optimizer_states_equals_fedavg(tmp_path):
    """FedProx's proximal terms (the client's in its loss, the server's on the server) vanish at mu = 0, and both
    sides' optimizer states carried into round 2 are the same either way: the adapters must match FedAvg's."""
    finals = {}
    for strategy in ("fedavg", "fedprox"):
        result = fit(*TINY, "--out_dir", str(tmp_path), "--fed.strategy", strategy, "--fed.mu", "0", "--fed.rounds",
                     "2", "--train.keep_optimizer_state", "true", "--name", strategy)
        assert result.returncode == 0, result.stderr[-3000:]
        finals[strategy] = adapters(tmp_path / strategy / "round_001")
    assert finals["fedavg"].keys() == finals["fedprox"].keys()
    assert all(torch.allclose(finals["fedavg"][k], finals["fedprox"][k], atol=1e-7) for k in finals["fedavg"])


def kill_after_the_first_round(*args: str, run_dir: Path) -> None:
    """Start `fellrec fit *args` and SIGKILL it as soon as run_dir/round_000 exists."""
    command = [sys.executable, "-m", "fellrec", "fit", *args]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run_dir / "round_000").is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_resume_after_a_kill_ends_with_the_same_adapters(reference, tmp_path):
    run_dir = tmp_path / "tiny"
    kill_after_the_first_round(*TINY, "--out_dir", str(tmp_path), "--fed.rounds", "3", run_dir=run_dir)
    assert (run_dir / "round_000").is_dir() and not (run_dir / "round_002").exists()
    again = fit("--resume", str(run_dir))  # the run's saved config, nothing else
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout + again.stderr
    resumed, uninterrupted = adapters(run_dir / "round_002"), adapters(reference / "round_002")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert [r["round"] for r in rows(run_dir / "rounds.csv")] == ["0", "1", "2"]


def test_two_processes_give_the_same_adapters(reference, tmp_path):
    result = fit(*TINY, "--out_dir", str(tmp_path), "--fed.rounds", "3", "--train.devices", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    two, one = adapters(tmp_path / "tiny" / "round_002"), adapters(reference / "round_002")
    assert two.keys() == one.keys()
    assert all(torch.allclose(two[k], one[k], atol=1e-6) for k in two)


def test_an_existing_run_is_not_overwritten(reference):
    result = fit(*TINY, "--out_dir", str(reference.parent))
    assert result.returncode == 1 and "--resume" in result.stderr


def test_wandb_offline_run_and_saved_config(tmp_path):
    result = fit(*TINY, "--out_dir", str(tmp_path), "--fed.rounds", "1", "--log.wandb", "offline",
                 "--fed.strategy", "local")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "tiny"
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    tables = list((run_dir / "wandb").glob("offline-run-*/files/media/table/test/clients_*.table.json"))
    assert tables and json.loads(tables[0].read_text())["columns"][-1] == "popularity ndcg@10"
    assert list((run_dir / "wandb").glob("offline-run-*/files/media/images/plots/weights_*.png"))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["fed"]["strategy"] == "local" and saved["model"]["name"] == "tiny-llama"
    assert "gamma" in rows(run_dir / "metrics.csv")[0]


def test_a_diverging_client_is_discarded_and_the_run_goes_on(tmp_path):
    # float16 and a huge learning rate overflow the second forward pass (the loss turns NaN); those updates must be
    # dropped: the clients keep the adapter they started the round with (LoRA B still zero).
    result = fit(*TINY, "--out_dir", str(tmp_path), "--fed.rounds", "1", "--train.lr", "1e4",
                 "--model.compute_dtype", "float16", "--model.quantize", "none")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = rows(tmp_path / "tiny" / "metrics.csv")
    diverged = [int(r["client"]) for r in metrics if r["diverged"] == "1"]
    assert diverged and f"client {diverged[0]} met a NaN/inf loss" in result.stderr
    final = adapters(tmp_path / "tiny" / "round_000")
    for c in diverged:
        b_tensors = [t for name, t in final.items() if name.startswith(f"client_{c}/") and "lora_B" in name]
        assert b_tensors and all(torch.count_nonzero(t) == 0 for t in b_tensors)


def test_a_client_without_training_data_is_skipped(tmp_path):
    result = fit(*TINY, "--out_dir", str(tmp_path), "--fed.rounds", "1", "--partition.method", "iid",
                 "--partition.num_clients", "12", "--data.train_samples", "6")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = rows(tmp_path / "tiny" / "metrics.csv")
    empty = [int(r["client"]) for r in metrics if r["num_samples"] == "0"]
    assert empty and all(r["sampled"] == "0" for r in metrics if int(r["client"]) in empty)
    assert f"client {empty[0]} has no training data" in result.stdout + result.stderr


def test_ctrl_c_keeps_the_last_complete_round(tmp_path):
    # Started with SIGINT ignored, as a shell without job control starts a background command (`make test &` from a
    # script): Python keeps it ignored unless fellrec installs its own handler, and the run went on to exit code 0.
    command = [sys.executable, "-m", "fellrec", "fit", *TINY, "--out_dir", str(tmp_path), "--fed.rounds", "50"]
    output = tmp_path / "output.txt"  # not a pipe: nobody reads it until the end, and a full pipe blocks the run
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process = subprocess.Popen(command, cwd=REPO, stdout=output.open("w"), stderr=subprocess.STDOUT)
    finally:
        signal.signal(signal.SIGINT, previous)
    run_dir = tmp_path / "tiny"
    try:
        deadline = time.time() + 600
        # Any complete round will do: on a loaded machine round_000 may already be rotated out (keep_checkpoints).
        while not list(run_dir.glob("round_[0-9]*")) and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, output.read_text()[-3000:]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=180) == 130, output.read_text()[-3000:]
    finally:
        process.kill()
    text = output.read_text()
    last = re.search(r"interrupted: (round_\d+) is the last complete round; continue with `fellrec fit --resume ",
                     text)
    assert last and last.group(1) == sorted(p.name for p in run_dir.glob("round_[0-9]*"))[-1], text[-3000:]
    assert (run_dir / last.group(1) / "state.pt").is_file()
    assert adapters(run_dir / last.group(1))  # complete and readable


class FakeFederation:
    """Just the round loop's view of a Federation: counts the rounds it runs."""

    def __init__(self, on_round):
        self.start_round, self.is_main, self.rounds_run, self.on_round = 0, True, [], on_round

    def run_round(self, round_idx: int, bars) -> bool:
        self.rounds_run.append(round_idx)
        self.on_round(round_idx)
        return False


def test_a_swallowed_interrupt_still_stops_the_rounds_at_the_next_boundary(tmp_path, capsys):
    from fellrec.federation.fit import run_rounds

    pressed = []  # what the CLI's SIGINT handler records; its KeyboardInterrupt is lost (a library ate it)
    federation = FakeFederation(lambda round_idx: pressed.append(True) if round_idx == 1 else None)
    cfg = SimpleNamespace(fed=SimpleNamespace(rounds=5, patience=5))
    with pytest.raises(KeyboardInterrupt):
        run_rounds(federation, cfg, tmp_path, interrupted=lambda: bool(pressed))
    assert federation.rounds_run == [0, 1]
    assert "interrupted before the first round checkpoint: nothing to resume" in capsys.readouterr().err


def test_a_command_that_swallowed_ctrl_c_still_exits_130(monkeypatch):
    from fellrec import cli

    def swallow(cfg):
        """Receives a Ctrl-C and, like a careless library, catches the KeyboardInterrupt."""
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here, on the first bytecode after the signal
        except KeyboardInterrupt:
            pass

    monkeypatch.setitem(cli.COMMANDS, "swallow", swallow)
    previous = signal.getsignal(signal.SIGINT)
    assert cli.main(["swallow", *TINY]) == 130
    assert signal.getsignal(signal.SIGINT) is previous  # the CLI's handler is gone again


def test_test_command_writes_results_json(reference):
    result = subprocess.run([sys.executable, "-m", "fellrec", "test", "--ckpt", str(reference / "round_002"),
                             "--eval.users_per_client", "2", "--eval.num_beams", "2", "--eval.max_new_tokens", "6"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((reference / "round_002" / "results.json").read_text())
    assert {"overall", "clients", "balance", "popularity"} <= set(results)
    assert [c["users"] for c in results["clients"]] == [2, 2, 2]
    assert_consistent_report(results)
    assert set(results["balance"]["ndcg@10"]) == {"std", "min", "max_minus_min", "cv"}
    assert "ndcg@10" in results["popularity"] and "pop ndcg@10" in result.stdout
    assert (reference / "round_002" / "clients_ndcg10.png").stat().st_size > 5_000


def test_collaborative_grounding_trains_each_clients_sasrec_and_picks_gamma_on_validation(reference):
    from fellrec.evaluation.grounding import POP_GAMMAS

    result = subprocess.run([sys.executable, "-m", "fellrec", "test", "--ckpt", str(reference / "round_001"),
                             "--eval.users_per_client", "2", "--eval.num_beams", "2", "--eval.max_new_tokens", "6",
                             "--eval.collaborative_aware", "true"], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((reference / "round_001" / "results.json").read_text())
    assert results["grounding_prior"] == "sasrec" and results["pop_gamma"] in POP_GAMMAS
    assert "training each client's SASRec" in result.stderr and "tuning pop_gamma" in result.stderr
    assert [c["users"] for c in results["clients"]] == [2, 2, 2]


def test_recommend_returns_real_titles(reference):
    from fellrec.config import DataArgs
    from fellrec.data.pipeline import load_data

    result = subprocess.run([sys.executable, "-m", "fellrec", "recommend", "--ckpt", str(reference / "best"),
                             "--client", "1", "--history", "Toy Story (1995)", "Heat (1995)", "--top-k", "5",
                             "--eval.num_beams", "2", "--eval.max_new_tokens", "6"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    titles = [line.split(". ", 1)[1].rsplit("   (distance", 1)[0] for line in result.stdout.splitlines()]
    assert len(titles) == 5 and set(titles) <= set(load_data(DataArgs()).titles.values())
    assert "Toy Story (1995)" not in titles and "Heat (1995)" not in titles
    # The generative path gives what it gave before the objectives became plug-ins: this exact output (titles and
    # distances) was recorded from the same command at commit 7daa762 (fp32, conf/tiny.yaml, 3 rounds).
    assert result.stdout.splitlines() == [
        "  1. Sliver (1993)   (distance 9.4273)", "  2. Sleeper (1973)   (distance 9.4362)",
        "  3. Cement Garden, The (1993)   (distance 9.5772)", "  4. Paris, France (1993)   (distance 9.6003)",
        "  5. Secret Garden, The (1993)   (distance 9.6035)"]


def test_score_objective_ranks_every_test_user_and_resumes_bitwise(tmp_path):
    """model.objective score: the item table and bias are client-side tensors in every checkpoint, a killed run resumes
    to the same tensors bit for bit, and every test user is ranked (60 here, split over the 3 clients)."""
    score = [*TINY, "--model.objective", "score", "--eval.users_per_client", "null", "--fed.rounds", "2"]
    reference = fit(*score, "--out_dir", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    uninterrupted = adapters(tmp_path / "ref" / "tiny" / "round_001")
    heads = [name for name in uninterrupted if "score_head." in name]
    assert len(heads) == 9 and all("/client_side/" in name for name in heads)  # 3 clients x (items, bias, scale)
    assert not torch.equal(uninterrupted["client_0/client_side/score_head.bias"],
                           uninterrupted["client_1/client_side/score_head.bias"])  # each started at its own counts
    results = json.loads((tmp_path / "ref" / "tiny" / "results.json").read_text())
    assert sum(c["users"] for c in results["clients"]) == 60 and results["protocol"] == "prompt"
    assert results["objective"] == "score"
    assert_consistent_report(results)
    best = tmp_path / "ref" / "tiny" / "best"
    shown = subprocess.run([sys.executable, "-m", "fellrec", "recommend", "--ckpt", str(best), "--client", "1",
                            "--history", "Toy Story (1995)", "Heat (1995)", "--top-k", "5"],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0, shown.stderr[-3000:]
    scores = [float(line.rsplit("(score ", 1)[1].rstrip(")")) for line in shown.stdout.splitlines()]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)  # best first, higher is better
    assert "Toy Story (1995)" not in shown.stdout and "Heat (1995)" not in shown.stdout

    run_dir = tmp_path / "again" / "tiny"
    kill_after_the_first_round(*score, "--out_dir", str(tmp_path / "again"), run_dir=run_dir)
    assert (run_dir / "round_000").is_dir() and not (run_dir / "round_001").exists()
    again = fit("--resume", str(run_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = adapters(run_dir / "round_001")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
