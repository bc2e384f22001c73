"""FedAvg: one shared adapter, the sample-weighted average of the participants' adapters."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fellrec.federation.strategies.base import Strategy, check_num_samples, check_states


def fedavg_weights(ids: list[int], num_samples: Mapping[int, int]) -> Tensor:
    """C x C matrix whose every row is n_j / sum_k n_k: every client receives the identical average."""
    n = torch.tensor(check_num_samples(ids, num_samples), dtype=torch.float64)
    return (n / n.sum()).expand(len(ids), -1).clone()


class FedAvg(Strategy):
    """Sample-weighted averaging (McMahan et al., 2017).

    There is one global adapter: clients outside the round's sample also receive it (``global_model``), as in
    FedAvg with partial participation, where every client starts its next round from the current global model.
    """

    name = "fedavg"
    global_model = True

    def aggregation_weights(self, states, num_samples, signals, round_idx, start_states=None):
        return fedavg_weights(check_states(states), num_samples)
