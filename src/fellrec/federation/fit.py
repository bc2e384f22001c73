"""`fellrec fit`: launch Fabric, build the federation, run (or resume) the rounds with progress bars."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from fellrec.federation.checkpoint import latest_round_dir
from fellrec.federation.orchestrator import Federation, RunConfig
from fellrec.federation.precision import precision_for


class Bars:
    """Three progress bars (rounds, clients, steps) on rank 0; silent elsewhere."""

    def __init__(self, total_rounds: int, start: int, enabled: bool):
        self.enabled = enabled
        self.rounds = tqdm(total=total_rounds, initial=start, desc="rounds", position=0, disable=not enabled,
                           dynamic_ncols=True)
        self.clients = tqdm(total=0, desc="clients", position=1, leave=False, disable=not enabled,
                            dynamic_ncols=True)
        self.steps = tqdm(total=0, desc="steps", position=2, leave=False, disable=not enabled, dynamic_ncols=True)

    def start_round(self, round_idx: int, clients: int, steps: int) -> None:
        for bar, total in ((self.clients, clients), (self.steps, steps)):
            bar.reset(total=total)
        self.clients.set_description(f"round {round_idx} clients")

    def close(self) -> None:
        for bar in (self.steps, self.clients, self.rounds):
            bar.close()


def make_fabric(cfg: RunConfig):
    from lightning.fabric import Fabric

    accelerator = cfg.train.accelerator
    if accelerator == "auto":
        import torch

        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    devices = int(os.environ.get("WORLD_SIZE", cfg.train.devices))  # torchrun decides the process count
    strategy = "ddp" if devices > 1 else "auto"
    return Fabric(accelerator=accelerator, devices=devices, strategy=strategy,
                  precision=precision_for(cfg.train, accelerator))


def fit(cfg: RunConfig, run_dir: Path, resume: bool, config_dict: dict,
        interrupted: Callable[[], bool] = lambda: False) -> int:
    """Run the federated training, then evaluate the best adapters; returns the last completed round.

    `interrupted` says whether a Ctrl-C came (the CLI's SIGINT handler records it): the round loop stops at the next
    round boundary even when the KeyboardInterrupt itself was swallowed somewhere."""
    fabric = make_fabric(cfg)
    fabric.launch()
    from fellrec.reporting.round_log import RoundLog

    federation = Federation(cfg, fabric, run_dir)
    if resume:
        federation.resume()
    if federation.is_main:
        federation.round_log = RoundLog(run_dir, cfg.log.wandb, cfg.log.project, cfg.name, config_dict)
        federation.round_log.truncate_after(federation.start_round - 1)
    try:
        last = run_rounds(federation, cfg, run_dir, interrupted)
        if federation.is_main and last >= 0:
            report(federation, cfg, run_dir)
        fabric.barrier()  # the other processes wait for rank 0's evaluation
    finally:
        if federation.is_main:
            federation.round_log.close()
    return last


def run_rounds(federation: Federation, cfg: RunConfig, run_dir: Path,
               interrupted: Callable[[], bool] = lambda: False) -> int:
    bars = Bars(cfg.fed.rounds, federation.start_round, federation.is_main and sys.stderr is not None)
    last = federation.start_round - 1
    try:
        for round_idx in range(federation.start_round, cfg.fed.rounds):
            stop = federation.run_round(round_idx, bars)
            bars.rounds.update(1)
            last = round_idx
            if interrupted():  # its KeyboardInterrupt was lost on the way up (see cli.CtrlC)
                raise KeyboardInterrupt
            if stop:
                if federation.is_main:
                    tqdm.write(f"early stop after round {round_idx}: no gain in the mean validation loss for "
                               f"{cfg.fed.patience} rounds", file=sys.stderr)
                break
    except KeyboardInterrupt:
        if federation.is_main:
            tqdm.write(interrupted_message(run_dir), file=sys.stderr)
        raise
    finally:
        bars.close()
    return last


def interrupted_message(run_dir: Path) -> str:
    """What survives: read from the disk, since the interrupt may land after a round's checkpoint was renamed into
    place but before the loop counted the round."""
    latest = latest_round_dir(run_dir)
    if latest is None:
        return "\ninterrupted before the first round checkpoint: nothing to resume, start the run again"
    return (f"\ninterrupted: {latest.name} is the last complete round; continue with "
            f"`fellrec fit --resume {run_dir}`")


def report(federation: Federation, cfg: RunConfig, run_dir: Path) -> None:
    """The final evaluation (console table, results.json/csv, W&B table and bar chart) and the PNG plots."""
    from fellrec.evaluation.checkpoint_eval import format_results
    from fellrec.reporting.plots import plot_rounds, plot_weights

    plots = [plot_rounds(run_dir), plot_weights(run_dir)]
    if cfg.eval.final:
        results = federation.evaluate_best()
        print(f"\ntest users, each client with its best adapter (rounds {results['best_round']}):")
        print(format_results(results), flush=True)
        federation.round_log.log_results(results)
        plots.append(run_dir / "clients_ndcg10.png")
    federation.round_log.log_images([p for p in plots if p is not None])
