"""int8 storage of the frozen server-side blocks, computed in int8 on a CPU (`model.quantize: int8`).

Each base nn.Linear of the server range becomes an Int8Linear: int8 weights with one scale per output row
(symmetric). On a CPU the forward runs PyTorch's fbgemm/oneDNN dynamic-int8 kernel (the activations are quantised
per call), about twice the fp32 matmul rate on an AVX2 CPU, where bf16 has no hardware path; elsewhere it
dequantises and runs the ordinary matmul. The base weights are frozen, so the backward needs only the input's
gradient, grad @ W, computed in floating point from the dequantised weights (the int8 kernel has no backward).
"""

from __future__ import annotations

import functools
import warnings
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from fellrec.model.quantize import replace_base_linears, replace_modules

_REDUCE_RANGE = True  # 7-bit activations: without VNNI the kernel's int16 accumulation of u8 x s8 pairs saturates


@functools.cache
def cpu_kernel_available() -> bool:
    """Whether this PyTorch build has the CPU dynamic-int8 linear kernel (it may leave a later release); without it
    an Int8Linear dequantises and runs the float matmul (same storage, no speed-up)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, "linear_dynamic")


class Int8Linear(nn.Module):
    """A frozen nn.Linear as int8 weights plus a per-row fp32 scale (and its bias, unquantised)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        self.weight = nn.Parameter(torch.round(weight / scale[:, None]).to(torch.int8), requires_grad=False)
        self.weight_scale = nn.Parameter(scale, requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self._packed = None  # the CPU kernel's packed copy of the weights, built at the first CPU forward

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight.float() * self.weight_scale[:, None]).to(dtype)

    def to_linear(self) -> nn.Linear:
        """A frozen nn.Linear of the dequantised weights (and the bias)."""
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.weight.device)
        dense.weight.data = self.dequantized()
        if self.bias is not None:
            dense.bias.data = self.bias.data.clone()
        return dense.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _Int8Matmul.apply(x, self)
        return self.matmul(x)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not cpu_kernel_available():
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self.dequantized(x.dtype), bias)
        flat = x.reshape(-1, self.in_features).float().contiguous()
        out = torch.ops.quantized.linear_dynamic(flat, self._packed_weights(), _REDUCE_RANGE)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _packed_weights(self):
        if self._packed is None:
            scale = self.weight_scale.data.double().cpu()
            with warnings.catch_warnings():  # PyTorch marks its quantised tensors deprecated (still there in 2.13)
                warnings.simplefilter("ignore")
                q = torch.quantize_per_channel(self.dequantized().cpu(), scale,
                                               torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
                bias = None if self.bias is None else self.bias.data.cpu()
                self._packed = torch.ops.quantized.linear_prepack(q, bias)
        return self._packed

    def __getstate__(self):  # the packed copy is a kernel handle: rebuilt on demand, never copied or pickled
        return {**self.__dict__, "_packed": None}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class _Int8Matmul(torch.autograd.Function):
    """x -> the module's int8 matmul; backward: grad_x = grad @ W from the dequantised weights."""

    @staticmethod
    def forward(ctx, x, module):
        ctx.module = module
        return module.matmul(x)

    @staticmethod
    def backward(ctx, grad):
        return grad @ ctx.module.dequantized(grad.dtype), None


def int8_blocks(blocks: Iterable[nn.Module]) -> int:
    """Replace every base nn.Linear inside `blocks` by an Int8Linear, in place; returns how many.

    Run it after peft has attached: the LoRA layers' own Linears stay dense and their base_layer becomes int8.
    """
    return replace_base_linears(blocks, Int8Linear)


def dequantize_int8(blocks: Iterable[nn.Module]) -> int:
    """The inverse swap: every Int8Linear inside `blocks` back to an nn.Linear of its dequantised weights."""
    return replace_modules(blocks, lambda m: isinstance(m, Int8Linear), Int8Linear.to_linear)
