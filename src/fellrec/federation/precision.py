"""`train.precision: auto`: bf16 autocast wherever the hardware computes bf16 natively, fp32 elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from fellrec.config import TrainArgs


def precision_for(train: TrainArgs, accelerator: str, cpu_flags: Optional[set[str]] = None) -> str:
    """`train.precision`, with auto resolved: bf16 autocast wherever the hardware computes bf16 natively."""
    if train.precision != "auto":
        return train.precision
    if accelerator == "cuda":
        return "bf16-mixed"
    flags = cpu_flags if cpu_flags is not None else _cpu_flags()
    return "bf16-mixed" if flags & {"avx512_bf16", "amx_bf16"} else "32-true"


def _cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere: fp32 is the safe choice)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())
