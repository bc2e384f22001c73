"""The generative training step three ways on the same ML-100K BIGRec micro-batches, one loaded model, interleaved
repeats, medians: the LM head over every position in fp32 (before), the head only at labelled positions in fp32, and
the same under bf16 autocast (what `train.precision: auto` picks on an AVX512-BF16 or AMX CPU).

    python experiments/bench_lm_head.py                       # SmolLM2 (nf4 middle, fp32), 4 x 4 samples, 5 repeats
    python experiments/bench_lm_head.py --json                # one JSON object on stdout
    python experiments/bench_lm_head.py --model tiny-llama --repeats 2   # seconds, a smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fellrec.config import DataArgs, ModelArgs, SplitArgs
from fellrec.data.collate import collate, encode
from fellrec.data.pipeline import load_data
from fellrec.data.prompts import PromptStyle, render
from fellrec.model.blocks import causal_lm_loss
from fellrec.model.loading import load_tokenizer
from fellrec.model.split import SplitModel


def every_position_loss(client, batch) -> torch.Tensor:
    """The loss as computed before: logits at every position, then the shifted cross-entropy."""
    return causal_lm_loss(client(batch["input_ids"], batch["attention_mask"]), batch["labels"])


def step_seconds(loss_fn, client, batches) -> tuple[float, float]:
    """Seconds of forward + backward over `batches`, and the summed loss (both ways must agree)."""
    start, total = time.perf_counter(), 0.0
    for batch in batches:
        loss = loss_fn(batch)
        loss.backward()
        total += loss.item()
    return time.perf_counter() - start, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quantize", default="nf4", choices=["none", "nf4"])
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = load_data(DataArgs(source="movielens100k", train_samples=args.micro_batches * args.micro_batch_size))
    margs = ModelArgs(name=args.model, quantize=args.quantize)
    tokenizer = load_tokenizer(margs)
    model = SplitModel(margs, SplitArgs(head_layers=1, tail_layers=1), device="cpu")
    client = model.sides(0).train().client
    encoded = [encode(*render(s, data.titles, PromptStyle()), tokenizer, margs.max_length) for s in data.train]
    batches = [collate(encoded[i:i + args.micro_batch_size], tokenizer.pad_token_id)
               for i in range(0, len(encoded), args.micro_batch_size)]
    def bf16_loss(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return client.loss(batch)

    ways = {"every_position": lambda b: every_position_loss(client, b), "labelled_only": client.loss,
            "labelled_only_bf16": bf16_loss}
    seconds = {name: [] for name in ways}
    losses = {}
    for _ in range(args.repeats):  # interleaved: machine noise hits both ways alike
        for name, fn in ways.items():
            torch.manual_seed(1)  # the same LoRA dropout both ways
            s, losses[name] = step_seconds(fn, client, batches)
            seconds[name].append(s)
    samples = len(encoded)
    out = {f"{name}_samples_per_s": samples / statistics.median(s) for name, s in seconds.items()}
    out["speedup"] = out["labelled_only_samples_per_s"] / out["every_position_samples_per_s"]
    out["bf16_speedup"] = out["labelled_only_bf16_samples_per_s"] / out["labelled_only_samples_per_s"]
    out["loss_difference"] = abs(losses["labelled_only"] - losses["every_position"])
    out["bf16_loss_difference"] = abs(losses["labelled_only_bf16"] - losses["labelled_only"])
    out.update(model=args.model, quantize=args.quantize, samples=samples, repeats=args.repeats,
               mean_tokens=sum(len(e.input_ids) for e in encoded) / samples)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:>30}: {value:.4f}" if isinstance(value, float) else f"{key:>30}: {value}")


if __name__ == "__main__":
    main()
