"""Round time against the number of clients, and a FELLRec round against centralized training.

All set-ups train on the same samples (the same few-shot draw) and validate on the same samples, split over 5, 20 or
50 IID clients, or trained by one client (centralized). After one untimed warm-up round per set-up, rounds are timed
interleaved (set-up A, B, C, D, A, B, ...) and the median is kept, because these machines are noisy. A round is
everything `fellrec fit` does in one: local training, aggregation, validation, logs and the checkpoint.

    python experiments/bench_rounds.py                       # SmolLM2 (nf4 middle), 64 samples, 2 repeats
    python experiments/bench_rounds.py --quick --json        # the tiny test model: seconds, for the test suite
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

from fellrec.config import DataArgs, FedArgs, LogArgs, ModelArgs, PartitionArgs, SplitArgs, TrainArgs
from fellrec.federation.orchestrator import Federation, RunConfig
from fellrec.reporting.round_log import RoundLog

REPO = Path(__file__).resolve().parents[1]


class _NoBars:
    class _Bar:
        def update(self, n=1):
            pass

    clients = steps = _Bar()

    def start_round(self, *args):
        pass


def base_config(path: Path, train_samples: int, valid_samples: int, quick: bool) -> RunConfig:
    raw = yaml.safe_load(path.read_text())
    sections = {"data": DataArgs, "partition": PartitionArgs, "model": ModelArgs, "split": SplitArgs,
                "fed": FedArgs, "train": TrainArgs, "log": LogArgs}
    args = {key: cls(**(raw.get(key) or {})) for key, cls in sections.items()}
    args["data"] = replace(args["data"], train_samples=train_samples, valid_samples=valid_samples)
    args["train"] = replace(args["train"], val_samples_per_client=None, local_epochs=1)
    args["log"] = replace(args["log"], wandb="disabled")
    args["partition"] = replace(args["partition"], method="iid")
    if quick:
        args["model"] = replace(args["model"], name="tiny-llama", path=None)
        args["split"] = SplitArgs(head_layers=1, tail_layers=1)
    return RunConfig(name="bench", out_dir="", **args)


def setups(base: RunConfig) -> dict[str, RunConfig]:
    def with_clients(n: int, strategy: str = "fellrec") -> RunConfig:
        return replace(base, partition=replace(base.partition, num_clients=n),
                       fed=replace(base.fed, strategy=strategy, rounds=1_000))

    return {"fellrec_5": with_clients(5), "fellrec_20": with_clients(20), "fellrec_50": with_clients(50),
            "centralized": with_clients(5, "centralized")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "conf" / "ml100k-generative.yaml")
    parser.add_argument("--train-samples", type=int, default=64)
    parser.add_argument("--valid-samples", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny random model instead of the config's model")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the three ratios")
    args = parser.parse_args()

    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    base = base_config(args.config, args.train_samples, args.valid_samples, args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        federations = {}
        for name, cfg in setups(base).items():
            run_dir = Path(tmp) / name
            run_dir.mkdir()
            fed = Federation(cfg, fabric, run_dir)
            fed.round_log = RoundLog(run_dir, "disabled", "", name, {})
            federations[name] = fed
            print(f"built {name}: {len(fed.trainable)} clients with data, "
                  f"{sum(len(c.train) for c in fed.clients.values())} samples", file=sys.stderr)
        for name, fed in federations.items():  # warm-up: first-call costs (allocations, lazy init) stay untimed
            fed.run_round(0, _NoBars())
        times: dict[str, list[float]] = {name: [] for name in federations}
        for repeat in range(1, args.repeats + 1):
            for name, fed in federations.items():
                start = time.perf_counter()
                fed.run_round(repeat, _NoBars())
                times[name].append(time.perf_counter() - start)
                print(f"repeat {repeat} {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    result = {
        "ratio_20_vs_5": median["fellrec_20"] / median["fellrec_5"],
        "ratio_50_vs_5": median["fellrec_50"] / median["fellrec_5"],
        "ratio_fellrec_vs_centralized": median["fellrec_5"] / median["centralized"],
        "round_seconds": median,
        "train_samples": args.train_samples,
        "model": "tiny-llama" if args.quick else base.model.name,
        "repeats": args.repeats,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for name, seconds in median.items():
            print(f"{name:<14} {seconds:8.2f} s per round (median of {args.repeats})")
        print(f"20 vs 5 clients      {result['ratio_20_vs_5']:.3f}   (target <= 1.2)")
        print(f"50 vs 5 clients      {result['ratio_50_vs_5']:.3f}   (target <= 1.2)")
        print(f"fellrec vs central.  {result['ratio_fellrec_vs_centralized']:.3f}   (target <= 1.15)")


if __name__ == "__main__":
    main()
