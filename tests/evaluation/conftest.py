"""A tiny split model, its tokenizer and a small hand-made catalogue, shared by the grounding/evaluation tests."""

from __future__ import annotations

import pytest
import torch

from fellrec.config import ModelArgs, SplitArgs
from fellrec.data.table import RecData, Sample

TITLES = {str(i): t for i, t in enumerate([
    "Toy Story (1995)", "Heat (1995)", "GoldenEye (1995)", "Casino (1995)", "Babe (1995)", "Se7en (1995)",
    "Apollo 13 (1995)", "Braveheart (1995)", "Batman Forever (1995)", 'Tom Clancy\'s "Splinter Cell", Chaos Theory',
    "Twelve Monkeys (1995)", "Taxi Driver (1976)"])}


@pytest.fixture(scope="session")
def tiny():
    """(SplitModel, tokenizer) of the 4-layer random tiny-llama, built once per session."""
    from fellrec.model.loading import load_tokenizer
    from fellrec.model.split import SplitModel

    args = ModelArgs(name="tiny-llama", quantize="none")
    return SplitModel(args, SplitArgs(head_layers=1, tail_layers=1), device="cpu"), load_tokenizer(args)


def randomize_adapters(model, seed: int, scale: float = 0.5) -> None:
    """LoRA B starts at zero (a no-op adapter): random values make an adapter change the model's output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter_parameters().values():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="session")
def catalogue() -> RecData:
    """12 items, 6 users; item 0 is by far the most popular in training."""
    train_pairs = [(str(u), "0") for u in range(6)] + [("0", "1"), ("1", "1"), ("2", "3"), ("3", "5")]
    test = [Sample(str(u), (str(u + 1), str(u + 2), str(u + 3)), (str((u + 5) % 12),)) for u in range(6)]
    valid = [Sample(str(u), (str(u + 1), str(u + 2)), (str(u + 3),)) for u in range(6)]
    train = [Sample(str(u), (str(u + 1),), (str(u + 2),)) for u in range(6)]
    return RecData("hand", train, valid, test, dict(TITLES), {}, train_pairs, num_users=6, num_interactions=40)
