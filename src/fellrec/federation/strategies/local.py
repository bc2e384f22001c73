"""Local training only: every client keeps its own adapter (identity weights, no aggregation)."""

from __future__ import annotations

import torch

from fellrec.federation.strategies.base import Strategy, check_states


class Local(Strategy):
    """No federation: row i of the weights is the unit vector e_i, so aggregation returns each adapter unchanged."""

    name = "local"

    def aggregation_weights(self, states, num_samples, signals, round_idx, start_states=None):
        return torch.eye(len(check_states(states)), dtype=torch.float64)
