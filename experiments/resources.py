"""Resource table against the head depth k: client memory, bytes per step and per round, step time.

One row per k (m = the config's split.tail_layers), measured by `fellrec bench split` (run_bench_split, one k per
call); writes OUT/resources.md (the table, stamped with the command, commit, machine and date) and OUT/resources.png
(client memory, bytes per step and step-time overhead against k).

Columns:
- client / server memory: base weights each side stores (the server's nf4 body with its quant state); adapters
  excluded. client fraction: the client's share of the model's base parameters (a count ratio).
- up+down per step: boundary traffic of one training step (forward and backward) on one batch of --batch-size
  samples of --seq-len tokens; it grows linearly with both.
- adapter up: the client-side LoRA adapter the client uploads for aggregation once per round (the tensors of its
  head and tail blocks, as the orchestrator logs `adapter_bytes_uploaded`); the aggregate coming back is not counted.
- per round: up+down per step x --steps-per-round + adapter up. The default steps per round is the number of
  --batch-size steps an average client takes in one round of the config:
  ceil(data.train_samples / partition.num_clients * train.local_epochs / batch size).
- split / unsplit: median ms of one LoRA step through the link and as one unsplit model; overhead = the median of the
  per-repeat ratios split / unsplit.

    python experiments/resources.py                        # conf/ml100k-generative.yaml (SmolLM2, nf4 middle), k 0-8
    python experiments/resources.py --quick --out /tmp/r   # the tiny test model, k 1 2, 1 repeat: seconds
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import yaml

from fellrec.config import DataArgs, ModelArgs, PartitionArgs, SplitArgs, TrainArgs
from fellrec.errors import FellrecError
from fellrec.reporting.stamp import dataset_name, git_commit, machine

REPO = Path(__file__).resolve().parents[1]
MIB, KIB = 1024 ** 2, 1024
TABLE = (  # (header, row key, format)
    ("k", "k", "{}"),
    ("client memory (MiB)", "client_mib", "{:.2f}"),
    ("server memory (MiB)", "server_mib", "{:.2f}"),
    ("client fraction", "client_fraction", "{:.3f}"),
    ("KiB up+down / step", "kib_per_step", "{:.1f}"),
    ("adapter up (KiB)", "adapter_kib", "{:.1f}"),
    ("KiB / round", "kib_per_round", "{:.1f}"),
    ("step split (ms)", "split_ms", "{:.1f}"),
    ("step unsplit (ms)", "unsplit_ms", "{:.1f}"),
    ("overhead ratio", "overhead_ratio", "{:.3f}"),
)


def load_config(path: Path, quick: bool) -> dict:
    """The config's sections as fellrec dataclasses, read as experiments/bench_rounds.py reads them."""
    raw = yaml.safe_load(path.read_text())
    sections = {"data": DataArgs, "partition": PartitionArgs, "model": ModelArgs, "split": SplitArgs,
                "train": TrainArgs}
    cfg = {key: cls(**(raw.get(key) or {})) for key, cls in sections.items()}
    cfg["name"] = raw.get("name") or path.stem
    if quick:
        cfg["model"] = replace(cfg["model"], name="tiny-llama", path=None)
        cfg["split"] = SplitArgs(head_layers=1, tail_layers=1)
    return cfg


def default_steps_per_round(cfg: dict, batch_size: int) -> int:
    train_samples = cfg["data"].train_samples
    if train_samples is None:
        raise FellrecError("data.train_samples is null in this config (all samples): give --steps-per-round")
    per_client = train_samples / cfg["partition"].num_clients * cfg["train"].local_epochs
    return max(1, math.ceil(per_client / batch_size))


def adapter_upload_bytes(model_args: ModelArgs, split: SplitArgs, ks: list[int]) -> tuple[dict[int, int], int]:
    """Bytes of the client-side LoRA adapter at each k (the LoRA tensors outside the blocks and in the client's
    head and tail blocks; their shapes do not depend on the split, so one model serves every k), and the number of
    decoder layers."""
    from fellrec.model.lora import on_client
    from fellrec.model.split import SplitModel

    model = SplitModel(model_args, replace(split, head_layers=min(ks), per_client={}), device="cpu")
    m, n = split.tail_layers, model.n_layers
    live = model.adapter_parameters()
    sizes = {k: sum(p.numel() * p.element_size() for name, p in live.items() if on_client(name, k, m, n))
             for k in ks}
    del model, live
    gc.collect()
    return sizes, n


def derived_row(row: dict, adapter_bytes: int, steps_per_round: int) -> dict:
    per_step = row["bytes_up_per_step"] + row["bytes_down_per_step"]
    return {**row, "adapter_bytes_up_per_round": adapter_bytes, "steps_per_round": steps_per_round,
            "bytes_per_round": per_step * steps_per_round + adapter_bytes,
            "client_mib": row["client_param_bytes"] / MIB, "server_mib": row["server_param_bytes"] / MIB,
            "kib_per_step": per_step / KIB, "adapter_kib": adapter_bytes / KIB,
            "kib_per_round": (per_step * steps_per_round + adapter_bytes) / KIB,
            "split_ms": row["step_time_split_s"] * 1e3, "unsplit_ms": row["step_time_full_s"] * 1e3}


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in TABLE) + " |", "|" + "|".join("---:" for _ in TABLE) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[key]) for _, key, fmt in TABLE) + " |")
    return "\n".join(lines)


def write_markdown(path: Path, rows: list[dict], info: dict) -> None:
    text = f"""# Resources against the head depth k ({info['model']}, m = {info['m']})

{markdown_table(rows)}

- command: `{info['command']}`
- commit: {info['commit']}
- machine: {info['machine']}
- date: {info['date']}; wall time {info['wall_s']:.0f} s; 1-minute load average {info['load'][0]:.1f} at the
  start, {info['load'][1]:.1f} at the end (above the CPU count, other jobs shared the cores: step times inflate)
- config: {info['config']} (model {info['model']}, quantize {info['quantize']}, {info['n_layers']} decoder layers,
  LoRA r={info['lora_r']} on {', '.join(info['lora_targets'])})
- bench: batch {info['batch_size']} x {info['seq_len']} tokens, {info['repeats']} timed repeats per arm (medians),
  {info['steps_per_round']} steps per round ({info['steps_source']})

Memory: base weights each side stores (the server's nf4 body with its quant state), adapters excluded; client
fraction is the client's share of the base parameter count. Up+down per step: everything crossing the link in one
training step (forward and backward) on one batch; it grows linearly with batch size and sequence length.
Adapter up: the client-side LoRA adapter uploaded once per round for aggregation (the aggregate coming back is not
counted). Per round = up+down per step x steps per round + adapter up. Step times: median of one LoRA step (forward,
backward, AdamW) through the link (split) and as one unsplit model with the same weights; overhead ratio = median
of the per-repeat ratios split / unsplit.
"""
    path.write_text(text)


def write_plot(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in rows]
    fig, (mem, traffic, overhead) = plt.subplots(1, 3, figsize=(14, 4))
    mem.plot(ks, [r["client_mib"] for r in rows], marker="o", label="client")
    mem.plot(ks, [r["server_mib"] for r in rows], marker="s", linestyle="--", label="server (nf4)")
    mem.set(title="memory of base weights", xlabel="head layers k", ylabel="MiB")
    mem.legend(fontsize="small")
    traffic.plot(ks, [r["bytes_up_per_step"] / KIB for r in rows], marker="^", label="up")
    traffic.plot(ks, [r["bytes_down_per_step"] / KIB for r in rows], marker="v", label="down")
    traffic.plot(ks, [r["kib_per_step"] for r in rows], marker="o", color="black", label="up+down")
    traffic.set(title="boundary traffic per step", xlabel="head layers k", ylabel="KiB", ylim=(0, None))
    traffic.legend(fontsize="small")
    overhead.plot(ks, [r["overhead_ratio"] for r in rows], marker="o", color="tab:red")
    overhead.axhline(1.0, color="grey", linewidth=0.8)
    overhead.set(title="step time split / unsplit", xlabel="head layers k", ylabel="overhead ratio")
    for ax in (mem, traffic, overhead):
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "conf" / "ml100k-generative.yaml")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="head depths k (default 0 1 2 4 8)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per arm (default 5; --quick: 1)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per bench step (default: the config's train.micro_batch_size)")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sample (as `fellrec bench split`)")
    parser.add_argument("--steps-per-round", type=int, default=None,
                        help="bench steps per client per round (default: from the config, see above)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default experiments/results/<dataset>/, --quick: .../quick/)")
    parser.add_argument("--quick", action="store_true", help="the tiny random model, k 1 2, 1 repeat (seconds)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()[0]

    from tqdm.auto import tqdm

    from fellrec.model.bench import run_bench_split

    cfg = load_config(args.config, args.quick)
    ks = args.ks or ([1, 2] if args.quick else [0, 1, 2, 4, 8])
    repeats = args.repeats or (1 if args.quick else 5)
    batch_size = args.batch_size or cfg["train"].micro_batch_size
    if args.steps_per_round is not None:
        steps, steps_source = args.steps_per_round, "--steps-per-round"
    else:
        steps = default_steps_per_round(cfg, batch_size)
        steps_source = (f"ceil({cfg['data'].train_samples} train samples / {cfg['partition'].num_clients} clients "
                        f"x {cfg['train'].local_epochs} epochs / batch {batch_size})")
    dataset = dataset_name(cfg["data"])
    out = args.out or REPO / "experiments" / "results" / dataset / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)

    adapters, n_layers = adapter_upload_bytes(cfg["model"], cfg["split"], ks)
    rows = []
    for k in tqdm(ks, desc="resources over k", unit="k", position=0):
        [row] = run_bench_split(cfg["model"], cfg["split"], ks=(k,), batch_size=batch_size, seq_len=args.seq_len,
                                repeats=repeats)
        rows.append(derived_row(row, adapters[k], steps))
        tqdm.write(f"k={k}: client {rows[-1]['client_mib']:.1f} MiB, {rows[-1]['kib_per_step']:.1f} KiB/step, "
                   f"overhead {row['overhead_ratio']:.3f}", file=sys.stderr)
        gc.collect()

    model = cfg["model"].path or cfg["model"].name
    info = {"model": model, "m": cfg["split"].tail_layers, "config": os.path.relpath(args.config, REPO),
            "command": shlex.join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
            "commit": git_commit(REPO), "machine": machine(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "quantize": cfg["model"].quantize, "n_layers": n_layers, "lora_r": cfg["model"].lora_r,
            "lora_targets": list(cfg["model"].lora_targets), "batch_size": batch_size, "seq_len": args.seq_len,
            "repeats": repeats, "steps_per_round": steps, "steps_source": steps_source,
            "wall_s": time.perf_counter() - started, "load": (load_before, os.getloadavg()[0])}
    write_markdown(out / "resources.md", rows, info)
    write_plot(out / "resources.png", rows, f"{model}, m = {info['m']}, batch {batch_size} x {args.seq_len} tokens")
    if args.json:
        print(json.dumps({"rows": rows, **info}, indent=2))
    else:
        print(markdown_table(rows))
        print(f"\nwrote {out / 'resources.md'} and {out / 'resources.png'} ({info['wall_s']:.0f} s)")


if __name__ == "__main__":
    try:
        main()
    except FellrecError as err:
        sys.exit(f"resources: {err}")
