"""Gradients through the split on a GPU: every LoRA tensor of tiny Llama and Qwen2 split models, for each
`model.quantize` (none, nf4, int8) x fp32 or bf16 autocast x left-padded or unpadded batches: how many have no,
non-finite or all-zero gradients after one backward (a healthy split has none). Written after gpu_check.py saw
non-finite gradients with the *random* 135M weights under bf16 autocast; this probe, with adapters set to random
values, found none in any of the 24 settings on an H200 (results/gpu/grad_probe_h200.json).

    python experiments/gpu_grad_probe.py            # on a CUDA machine; --device cpu runs the same here
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "experiments")]
from gpu_check import install_transformers_shim  # noqa: E402  (an older transformers on the GPU machine)
from tests.model.conftest import padded_batch  # noqa: E402

from fellrec.config import ModelArgs, SplitArgs  # noqa: E402
from fellrec.model.split import SplitModel  # noqa: E402


def grad_counts(sides, params: dict) -> dict:
    server = {id(p) for p in sides.server.parameters()}
    counts = {}
    for side in ("server", "client"):
        ps = [p for p in params.values() if (id(p) in server) == (side == "server")]
        counts[side] = {"n": len(ps), "none": sum(p.grad is None for p in ps),
                        "nan": sum(p.grad is not None and not bool(torch.isfinite(p.grad).all()) for p in ps),
                        "zero": sum(p.grad is not None and bool(p.grad.abs().sum() == 0) for p in ps)}
    return counts


def probe(name: str, quantize: str, autocast: str, padded: bool, device: str) -> dict:
    torch.manual_seed(0)
    model = SplitModel(ModelArgs(name=name, quantize=quantize), SplitArgs(head_layers=1, tail_layers=1), device=device)
    params = model.adapter_parameters()
    with torch.no_grad():  # LoRA B starts at zero, which would leave every A without a gradient
        for p in params.values():
            p.copy_(torch.randn_like(p) * 0.1)
    batch = padded_batch()
    if not padded:
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
        batch["labels"] = batch["input_ids"].clone()
    batch = {k: v.to(device) for k, v in batch.items()}
    sides = model.sides().train()
    ctx = torch.autocast(device, dtype=torch.bfloat16) if autocast == "bf16" else contextlib.nullcontext()
    with ctx:
        loss = sides.client.loss(batch)
    loss.backward()
    return {"model": name, "q": quantize, "autocast": autocast, "pad": padded, "loss": loss.item(),
            **grad_counts(sides, params)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    install_transformers_shim()
    rows = []
    for name in ("tiny-llama", "tiny-qwen2"):
        for quantize in ("none", "nf4", "int8"):
            for autocast in ("fp32", "bf16"):
                for padded in (True, False):
                    rows.append(probe(name, quantize, autocast, padded, args.device))
                    print(json.dumps(rows[-1]), flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "grad_probe.json").write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
