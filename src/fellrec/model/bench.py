"""Resource bench of the flexible storage strategy: memory split, boundary traffic and step-time overhead per k.

Definitions (one row per k, m fixed):
- client_param_bytes / server_param_bytes: base weights each side stores, as stored (the server's nf4 body with its
  quant state); full_param_bytes: the whole unsplit model stored densely in the compute dtype. Adapters excluded.
- client_fraction: the fraction of the model's base parameters the client holds (a parameter count ratio, i.e.
  dense bytes over dense bytes), so that compressing the server body to nf4 does not inflate it.
- bytes_up/down_per_step: nbytes of everything crossing the link in one training step (forward and backward).
- step_time_split_s / step_time_full_s: median seconds of one LoRA step (forward, backward, AdamW step on one
  batch) through the link and as one unsplit model holding the very same weights (nf4 middle included),
  interleaved over `repeats` rounds (order alternating); overhead_ratio = the median of the per-round ratios
  split / full, which cancels the machine's slow drift better than a ratio of medians.
- nf4_body_bytes / bf16_body_bytes: the server blocks stored in nf4 (with quant state) and densely in bf16.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import statistics
import time
from typing import Callable, Sequence

import torch

from fellrec.config import ModelArgs, SplitArgs
from fellrec.errors import FellrecError
from fellrec.model.int8 import dequantize_int8
from fellrec.model.quantize import bytes_in_dtype, param_count, quantize_blocks, storage_bytes
from fellrec.model.split import SplitModel, SplitSides

COLUMNS = ("k", "client_param_bytes", "server_param_bytes", "full_param_bytes", "client_fraction",
           "bytes_up_per_step", "bytes_down_per_step", "step_time_split_s", "step_time_full_s", "overhead_ratio",
           "nf4_body_bytes", "bf16_body_bytes")


def bench_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict:
    """A fixed random batch, the first row left-padded to half length (as real batches are)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch_size, seq_len), generator=g)
    mask = torch.ones_like(ids)
    mask[0, : seq_len // 2] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _sync() -> None:
    if torch.cuda.is_available():  # CUDA runs asynchronously: wait, or the clock measures only the launches
        torch.cuda.synchronize()


def _step(loss_fn: Callable[[], torch.Tensor], optimizers: Sequence[torch.optim.Optimizer],
          tick: Callable[[], None]) -> float:
    _sync()
    start = time.perf_counter()
    loss_fn().backward()
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync()
    elapsed = time.perf_counter() - start
    tick()  # outside the timed span
    return elapsed


def _nf4_body_bytes(model: SplitModel, sides: SplitSides) -> int:
    if model.model_args.quantize == "nf4":
        return storage_bytes(sides.server)
    blocks = copy.deepcopy(list(sides.server.blocks))  # measure what nf4 would store, leave the model as it is
    dequantize_int8(blocks)
    quantize_blocks(blocks, torch.float32, "cpu")
    return sum(storage_bytes(b) for b in blocks)


def _sizes(model: SplitModel, sides: SplitSides) -> dict:
    full_count = param_count(model.peft)
    dtype = next(model.causal_lm.model.embed_tokens.parameters()).dtype
    return {"client_param_bytes": storage_bytes(sides.client), "server_param_bytes": storage_bytes(sides.server),
            "full_param_bytes": bytes_in_dtype(model.peft, dtype),
            "client_fraction": param_count(sides.client) / full_count,
            "nf4_body_bytes": _nf4_body_bytes(model, sides),
            "bf16_body_bytes": bytes_in_dtype(sides.server, torch.bfloat16)}


def _times(model: SplitModel, sides: SplitSides, batch: dict, repeats: int, tick: Callable[[], None]) -> dict:
    batch = {n: t.to(model.device) for n, t in batch.items()}
    split_opts = [sides.client.configure_optimizers(), sides.server.configure_optimizers()]
    full_opt = torch.optim.AdamW([p for p in model.peft.parameters() if p.requires_grad], lr=model.lr)
    split = lambda: _step(lambda: sides.client.loss(batch), split_opts, tick)  # noqa: E731
    full = lambda: _step(lambda: model.full_loss(batch), [full_opt], tick)  # noqa: E731
    model.peft.train()
    split(), full()  # warm-up: allocator, kernels, lazy init
    sides.link.stats.reset()
    split()
    traffic = (sides.link.stats.bytes_up, sides.link.stats.bytes_down)
    times = _interleaved({"split": split, "full": full}, repeats)
    model.peft.eval()
    ratios = [s / f for s, f in zip(times["split"], times["full"])]
    return {"bytes_up_per_step": traffic[0], "bytes_down_per_step": traffic[1],
            "step_time_split_s": statistics.median(times["split"]),
            "step_time_full_s": statistics.median(times["full"]), "overhead_ratio": statistics.median(ratios)}


def _interleaved(steps: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Time each step `repeats` times, alternating the order every round, with Python's GC paused."""
    times: dict[str, list[float]] = {key: [] for key in steps}
    order = list(steps)
    gc.collect()
    gc.disable()  # a collection of the big model's objects landing in one arm would skew the pair
    try:
        for r in range(repeats):
            for key in order if r % 2 == 0 else order[::-1]:
                times[key].append(steps[key]())
    finally:
        gc.enable()
    return times


def steps_per_k(repeats: int) -> int:
    """Training steps one k runs: two warm-ups, one traffic count, then `repeats` of each arm."""
    return 3 + 2 * repeats


def bench_one(model_args: ModelArgs, split: SplitArgs, k: int, batch_size: int, seq_len: int,
              repeats: int, tick: Callable[[], None] = lambda: None) -> dict:
    """One row: a fresh SplitModel split at (k, split.tail_layers), sizes then timings."""
    split_k = dataclasses.replace(split, head_layers=k, per_client={})
    model = SplitModel(model_args, split_k)
    sides = model.sides()
    row = {"k": k, **_sizes(model, sides)}
    row.update(_times(model, sides, bench_batch(batch_size, seq_len, model.config.vocab_size), repeats, tick))
    return {c: row[c] for c in COLUMNS}


def run_bench_split(model: ModelArgs, split: SplitArgs, ks: Sequence[int] = (1, 2, 4, 8), batch_size: int = 4,
                    seq_len: int = 64, repeats: int = 7) -> list[dict]:
    """Bench the split at each k (m = split.tail_layers): one dict per k with the keys in COLUMNS."""
    from tqdm.auto import tqdm

    if repeats < 1 or batch_size < 1 or seq_len < 2:
        raise FellrecError("bench needs repeats >= 1, batch_size >= 1 and seq_len >= 2")
    rows = []
    with tqdm(total=len(ks) * steps_per_k(repeats), desc="bench split", unit="step") as bar:
        for k in ks:
            bar.set_postfix(k=k)
            rows.append(bench_one(model, split, k, batch_size, seq_len, repeats, lambda: bar.update(1)))
            gc.collect()  # drop the previous k's model before loading the next
    return rows


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_bench_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table of bench rows (bytes in KiB/MiB, times in seconds)."""
    headers = ("k", "client", "server", "full", "client frac", "up/step", "down/step", "split s", "full s",
               "overhead", "nf4 body", "bf16 body", "nf4/bf16")
    lines = [headers]
    for r in rows:
        lines.append((str(r["k"]), _human_bytes(r["client_param_bytes"]), _human_bytes(r["server_param_bytes"]),
                      _human_bytes(r["full_param_bytes"]), f"{r['client_fraction']:.3f}",
                      _human_bytes(r["bytes_up_per_step"]), _human_bytes(r["bytes_down_per_step"]),
                      f"{r['step_time_split_s']:.3f}", f"{r['step_time_full_s']:.3f}",
                      f"{r['overhead_ratio']:.3f}", _human_bytes(r["nf4_body_bytes"]),
                      _human_bytes(r["bf16_body_bytes"]), f"{r['nf4_body_bytes'] / r['bf16_body_bytes']:.3f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)
