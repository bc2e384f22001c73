"""Centralised baseline: one client holds every training sample, run through the same federated code path."""

from __future__ import annotations

from fellrec.errors import FellrecError
from fellrec.federation.strategies.base import check_states
from fellrec.federation.strategies.fedavg import FedAvg, fedavg_weights


class Centralized(FedAvg):
    """Exactly one client; its weight matrix is [[1]], so aggregation returns its adapter unchanged.

    The run must put all data in a single client (``partition.num_clients = 1``); more clients is an error rather
    than a silent FedAvg.
    """

    name = "centralized"

    def aggregation_weights(self, states, num_samples, signals, round_idx, start_states=None):
        ids = check_states(states)
        if len(ids) != 1:
            raise FellrecError(f"centralized training expects one client holding every sample, got {len(ids)} "
                               f"clients {ids}; set the number of clients to 1")
        return fedavg_weights(ids, num_samples)
