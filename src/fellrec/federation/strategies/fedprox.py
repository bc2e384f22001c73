"""FedProx: FedAvg aggregation plus a proximal term that keeps local training near the round's start point."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from fellrec.errors import FellrecError
from fellrec.federation.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg with the local loss term mu / 2 * ||w - w_global||^2 (Li et al., 2020).

    Args:
        mu: strength of the proximal term (>= 0; 0 gives plain FedAvg).
    """

    name = "fedprox"

    def __init__(self, mu: float = 0.01):
        self.mu = _check_mu(mu)

    def local_loss_term(self, params: Mapping[str, Tensor], global_params: Mapping[str, Tensor]) -> Tensor:
        """mu / 2 * sum over tensors of ||w - w_global||^2; ``global_params`` is held fixed (no gradient)."""
        if set(params) != set(global_params):
            raise FellrecError(f"FedProx: trainable and global parameters differ: "
                               f"{sorted(set(params) ^ set(global_params))}")
        total = super().local_loss_term(params, global_params)
        for key, w in params.items():
            total = total + (w - global_params[key].detach().to(w.dtype)).pow(2).sum()
        return 0.5 * self.mu * total

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mu": self.mu}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.mu = _check_mu(state.get("mu"))


def _check_mu(mu: Any) -> float:
    try:
        v = float(mu)
    except (TypeError, ValueError):
        raise FellrecError(f"FedProx mu must be a number, got {mu!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise FellrecError(f"FedProx mu must be a finite number >= 0, got {mu!r}")
    return v
