"""Tiny split models and a left-padded batch shared by the model tests."""

from __future__ import annotations

import pytest
import torch

from fellrec.config import ModelArgs, SplitArgs
from fellrec.model.split import SplitModel

VOCAB = 49152  # the packaged SmolLM2 vocabulary, used by the tiny models too
PAD = 2


def make_model(name: str = "tiny-llama", quantize: str = "none", k: int = 1, m: int = 1,
               per_client: dict | None = None, **model_kwargs) -> SplitModel:
    return SplitModel(ModelArgs(name=name, quantize=quantize, **model_kwargs),
                      SplitArgs(head_layers=k, tail_layers=m, per_client=per_client or {}), device="cpu")


def randomize_adapters(model: SplitModel, seed: int = 0, scale: float = 0.1) -> None:
    """LoRA B starts at zero (so A would get no gradient): give every adapter tensor random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter_parameters().values():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def padded_batch(batch_size: int = 3, seq_len: int = 12, seed: int = 0) -> dict:
    """Rows of different lengths, left-padded as the tokenizer pads them; labels -100 on the padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, seq_len), generator=g)
    mask = torch.ones_like(ids)
    for row in range(batch_size):
        mask[row, : (row * 3) % (seq_len - 2)] = 0
    ids = ids.masked_fill(mask == 0, PAD)
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def lora_grads(model: SplitModel) -> dict[str, torch.Tensor]:
    grads = {}
    for name, p in model.adapter_parameters().items():
        grads[name] = p.grad.detach().clone() if p.grad is not None else None
        p.grad = None
    return grads


@pytest.fixture
def batch() -> dict:
    return padded_batch()
