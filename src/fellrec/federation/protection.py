"""Optional protection of an uploaded adapter update: clip its L2 norm, add Gaussian noise (as DP-FedAvg).

The update is the change of the client's whole adapter (both sides of the split) during the round. Clipping bounds
what one client can move the aggregate; the noise (std = noise_multiplier x clip_norm per coordinate) hides the
exact update from the server. No privacy accounting (epsilon) is done here.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch

from fellrec.errors import FellrecError

State = dict[str, torch.Tensor]


def update_norm(start: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((new[n].float() - start[n].float()).pow(2).sum()) for n in new))


def protect_update(start: Mapping[str, torch.Tensor], new: Mapping[str, torch.Tensor], clip_norm: Optional[float],
                   noise_multiplier: float, seed: int) -> State:
    """start + clip(new - start) + noise; `new` unchanged when neither clipping nor noise is asked for."""
    if clip_norm is None and noise_multiplier == 0:
        return dict(new)
    if clip_norm is None or clip_norm <= 0:
        raise FellrecError(f"privacy.clip_norm must be a positive number when noise is added, got {clip_norm}")
    if noise_multiplier < 0:
        raise FellrecError(f"privacy.noise_multiplier must be at least 0, got {noise_multiplier}")
    scale = min(1.0, clip_norm / max(update_norm(start, new), 1e-12))
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(new):  # a fixed order: the same noise for the same seed
        delta = (new[name].float() - start[name].float()) * scale
        noise = torch.randn(delta.shape, generator=generator) * (noise_multiplier * clip_norm)
        out[name] = (start[name].float() + delta + noise.to(delta.device)).to(new[name].dtype)
    return out
