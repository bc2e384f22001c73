"""4-bit (bitsandbytes nf4) storage of the frozen server-side decoder blocks, and storage-size accounting."""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch
from torch import nn

from fellrec.errors import FellrecError


def import_bnb():
    """bitsandbytes or None, imported lazily (the import probes the hardware) and without its note that the
    optional `kernels` package (a hub download we never make) is missing. Call before importing peft."""
    quiet = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError:  # dense runs (quantize: none) work without it
        return None
    finally:
        quiet.setLevel(level)
    return bitsandbytes


def _linear4bit_class():
    bnb = import_bnb()
    return bnb.nn.Linear4bit if bnb is not None else type(None)


def _bnb():
    bnb = import_bnb()
    if bnb is None:
        raise FellrecError("model.quantize: nf4 needs the bitsandbytes package (or set model.quantize: none)")
    return bnb


def _to_nf4(linear: nn.Linear, compute_dtype: torch.dtype, device: torch.device) -> nn.Module:
    """One nn.Linear as an nf4 Linear4bit on `device` (the quantisation happens in `.to(device)`)."""
    bnb = _bnb()
    q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                          compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                          device="meta")
    q.weight = bnb.nn.Params4bit(linear.weight.data.detach().clone(), requires_grad=False, quant_type="nf4",
                                 compress_statistics=True, module=q)
    if linear.bias is not None:
        q.bias = nn.Parameter(linear.bias.data.detach().clone(), requires_grad=False)
    q = q.to(device)  # Params4bit quantises here, and only here
    _disable_cpu_repack(q)
    return q


def _disable_cpu_repack(module: nn.Module) -> None:
    # On AVX512-BF16 CPUs an eval-mode forward without grad repacks the 4-bit weight into a layout that has no
    # autograd path; every later training step would then silently give the LoRA above it no gradient.
    module.support_avx512bf16_for_cpu = False


def disable_cpu_repack(model: nn.Module) -> int:
    """Switch the repacking off on every Linear4bit inside `model` (also after peft has wrapped them)."""
    cls = _linear4bit_class()
    found = [m for m in model.modules() if isinstance(m, cls)]
    for m in found:
        _disable_cpu_repack(m)
    return len(found)


def _is_adapter(name: str) -> bool:
    return "lora_" in name


def replace_modules(blocks: Iterable[nn.Module], match: Callable[[nn.Module], bool],
                    convert: Callable[[nn.Module], nn.Module]) -> int:
    """Replace every module inside `blocks` that `match`es by `convert(module)`, in place; returns how many.

    LoRA's own layers (if peft is already attached) are left alone: adapters train, the body does not.
    """
    count = 0
    for block in blocks:
        for parent_name, parent in list(block.named_modules()):
            if _is_adapter(parent_name):
                continue
            for name, child in list(parent.named_children()):
                if match(child) and not _is_adapter(name):
                    setattr(parent, name, convert(child))
                    count += 1
    return count


def replace_base_linears(blocks: Iterable[nn.Module], convert: Callable[[nn.Linear], nn.Module]) -> int:
    """Replace every base nn.Linear inside `blocks` by `convert(linear)`, in place; returns how many."""
    return replace_modules(blocks, lambda m: type(m) is nn.Linear, convert)  # exact type: never re-wrap


def quantize_blocks(blocks: Iterable[nn.Module], compute_dtype: torch.dtype, device: torch.device | str) -> int:
    """Replace every base nn.Linear inside `blocks` by an nf4 Linear4bit, in place; returns how many."""
    device = torch.device(device)
    return replace_base_linears(blocks, lambda linear: _to_nf4(linear, compute_dtype, device))


def _quant_state_bytes(module: nn.Module) -> int:
    """Bytes of the quant state (absmax, nested absmax and code) that Linear4bit keeps outside its parameters."""
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    if state is None:
        return 0
    return sum(v.numel() * v.element_size() for v in state.as_dict(packed=True).values() if torch.is_tensor(v))


def storage_bytes(module: nn.Module) -> int:
    """Bytes `module`'s base weights occupy as stored (packed 4-bit data plus quant state where quantised).

    LoRA adapter tensors are left out: they are per client, not part of the shared body.
    """
    total = sum(p.numel() * p.element_size() for n, p in module.named_parameters() if not _is_adapter(n))
    cls = _linear4bit_class()
    return total + sum(_quant_state_bytes(m) for n, m in module.named_modules()
                       if isinstance(m, cls) and not _is_adapter(n))


def _logical_numel(param: nn.Parameter) -> int:
    """Number of weights a parameter stands for (a packed 4-bit tensor holds two per byte)."""
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else param.numel()


def param_count(module: nn.Module) -> int:
    """Base-model parameters in `module` (each counted once, tied ones too, adapters excluded)."""
    seen: set[int] = set()
    total = 0
    for name, p in module.named_parameters(remove_duplicate=False):
        if _is_adapter(name) or id(p) in seen:
            continue
        seen.add(id(p))
        total += _logical_numel(p)
    return total


def bytes_in_dtype(module: nn.Module, dtype: torch.dtype) -> int:
    """Bytes the base weights of `module` would take stored densely in `dtype` (e.g. bf16)."""
    return param_count(module) * torch.empty((), dtype=dtype).element_size()
