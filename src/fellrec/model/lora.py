"""LoRA adapters (peft) on both sides of the split, and the flat, split-independent naming of their tensors."""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from typing import Optional

from torch import nn

from fellrec.config import ModelArgs
from fellrec.errors import FellrecError
from fellrec.model.quantize import import_bnb

ADAPTER = "default"  # the one peft adapter slot; clients are swapped in by copying tensors, not by adapter names
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def lora_config(args: ModelArgs):
    """peft LoraConfig from `ModelArgs` (r, alpha, dropout, target modules), for a causal LM."""
    import_bnb()  # first, quietly: peft imports bitsandbytes too
    from peft import LoraConfig

    if not args.lora_targets:
        raise FellrecError("model.lora_targets is empty: LoRA needs at least one target module")
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=list(args.lora_targets), bias="none", task_type="CAUSAL_LM")


def attach_lora(model: nn.Module, args: ModelArgs):
    """Wrap `model` with one LoRA adapter; its nf4 Linear4bit layers get peft's 4-bit LoRA layer on top."""
    import_bnb()
    from peft import get_peft_model

    targets = set(args.lora_targets)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if not targets & present:
        raise FellrecError(f"none of model.lora_targets {sorted(targets)} is a module of this model")
    with warnings.catch_warnings():  # peft asks transformers 5 a deprecated question (is_gradient_checkpointing)
        warnings.filterwarnings("ignore", category=FutureWarning)
        return get_peft_model(model, lora_config(args), adapter_name=ADAPTER)


def flat_name(param_name: str) -> str:
    """peft's saved key for a live LoRA parameter name (the adapter name dropped), as in adapter_model.safetensors."""
    return param_name.replace(f".{ADAPTER}.", ".")


def adapter_parameters(peft_model: nn.Module) -> "OrderedDict[str, nn.Parameter]":
    """Every LoRA tensor of the model, by flat name, in module order (the same order for every split)."""
    return OrderedDict((flat_name(n), p) for n, p in peft_model.named_parameters() if "lora_" in n)


def layer_index(name: str) -> Optional[int]:
    """Decoder-block index a (flat or live) parameter name belongs to, None outside the blocks."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def on_client(name: str, k: int, m: int, n_layers: int) -> bool:
    """Whether the tensor `name` sits on the client for split (k, m): head/tail blocks and anything outside blocks."""
    i = layer_index(name)
    return i is None or i < k or i >= n_layers - m
