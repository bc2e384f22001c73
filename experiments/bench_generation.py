"""Batched beam search against one user at a time, and the item-embedding time of the whole catalogue.

The same ML-100K test prompts are decoded one user per `generate` call and in batches (left-padded), in one run on
one loaded model, interleaved over `--repeats` rounds (the fastest round counts), and the outputs are compared.
Then every item title is embedded once (no cache), as ItemIndex does on a first evaluation.

    python experiments/bench_generation.py                    # SmolLM2 (nf4 middle), 16 users, 4 beams, 24 tokens
    python experiments/bench_generation.py --json             # one JSON object on stdout
    python experiments/bench_generation.py --model tiny-llama --users 4 --batch-sizes 4   # seconds, a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from fellrec.config import DataArgs, ModelArgs, SplitArgs
from fellrec.data.pipeline import load_data
from fellrec.data.prompts import PromptStyle, render
from fellrec.evaluation.grounding import ItemIndex, generate_titles
from fellrec.model.loading import load_tokenizer
from fellrec.model.split import SplitModel


def timed_generation(model, tokenizer, prompts: list[str], batch_size: int, beams: int, tokens: int):
    start = time.perf_counter()
    titles = generate_titles(model, tokenizer, prompts, beams, tokens, batch_size)
    return titles, time.perf_counter() - start


def best_of(runs: list[tuple[list[str], float]]) -> tuple[list[str], float]:
    """The fastest repeat: noise on this machine only ever slows a run down."""
    return min(runs, key=lambda run: run[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quantize", default="nf4", choices=["nf4", "none"])
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each set-up; the fastest counts")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    data = load_data(DataArgs(test_users=args.users))
    style = PromptStyle()
    prompts = [render(s, data.titles, style)[0] for s in data.test]
    model_args = ModelArgs(name=args.model, quantize=args.quantize)
    model = SplitModel(model_args, SplitArgs(), device="cpu")
    tokenizer = load_tokenizer(model_args)
    # Warm-up of both paths at full length: the first long generations of a process run slower (allocations).
    for size in (1, 2):
        generate_titles(model, tokenizer, prompts[:2], args.beams, args.new_tokens, size)

    runs: dict[int, list] = {size: [] for size in [1, *args.batch_sizes]}
    for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits every set-up alike
        for size in runs:
            runs[size].append(timed_generation(model, tokenizer, prompts, size, args.beams, args.new_tokens))
    single, single_s = best_of(runs[1])
    report = {"model": args.model, "quantize": args.quantize, "users": len(prompts), "beams": args.beams,
              "new_tokens": args.new_tokens, "threads": torch.get_num_threads(), "repeats": args.repeats,
              "one_at_a_time": {"seconds": single_s, "users_per_second": len(prompts) / single_s,
                                "all_seconds": [r[1] for r in runs[1]]}}
    for size in args.batch_sizes:
        batched, seconds = best_of(runs[size])
        report[f"batch_{size}"] = {"seconds": seconds, "users_per_second": len(prompts) / seconds,
                                   "ratio": single_s / seconds, "all_seconds": [r[1] for r in runs[size]],
                                   "same_titles": sum(a == b for a, b in zip(single, batched))}
    index = ItemIndex.build(model, tokenizer, data.titles)  # no cache_dir: always computed
    report["item_embedding"] = {"items": len(index.items), "seconds": index.build_seconds}
    report["examples"] = single[:3]
    report["ratio"] = max(report[f"batch_{s}"]["ratio"] for s in args.batch_sizes)
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.model} ({args.quantize}), {len(prompts)} ML-100K test users, {args.beams} beams, "
          f"{args.new_tokens} new tokens, {report['threads']} threads, fastest of {args.repeats} runs",
          file=sys.stderr)
    print(f"one at a time: {single_s:7.1f} s  {len(prompts) / single_s:6.2f} users/s")
    for size in args.batch_sizes:
        row = report[f"batch_{size}"]
        print(f"batch {size:>2}:      {row['seconds']:7.1f} s  {row['users_per_second']:6.2f} users/s  "
              f"ratio {row['ratio']:.2f}x  same titles {row['same_titles']}/{len(prompts)}")
    print(f"item embeddings: {len(index.items)} titles in {index.build_seconds:.1f} s")
    print(f"ratio (best batch vs one at a time): {report['ratio']:.2f}x")


if __name__ == "__main__":
    main()
