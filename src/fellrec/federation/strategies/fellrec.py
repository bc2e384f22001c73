"""FELLRec's dynamic balance strategy (METHOD.md section 4): personalised, similarity-weighted aggregation.

    v_i   = what client i has learned, per ``similarity_on`` (see :mod:`.similarity`): its adapter as it is
            (``params``, the release), this round's change (``update``), the change since the common initial
            adapter (``drift``) or each LoRA module's effective change B.A (``product``)
    s_ij  = cos(v_i, v_j), or with ``similarity_centred`` cos(v_i - v_mean, v_j - v_mean)
    A_ii  = 1,  A_ij = gamma_i * k(s_ij) for j != i,  rows normalised
    theta_i <- sum_j A_ij theta_j   (tensor by tensor)

with the similarity kernel k either
  * ``linear`` (default, as the release): k(s) = (s + 1) / 2, in [0, 1];
  * ``softmax`` with temperature tau: k(s_ij) = exp((s_ij - 1) / tau), i.e. the self weight 1 = exp((s_ii - 1)/tau).
    With gamma = 1 a row is exactly softmax_j(s_ij / tau) over all j (self included), as METHOD.md writes;
    gamma_i scales the off-diagonal entries just as in the linear case, so heating works in both modes.

gamma_i comes from curriculum heating (:class:`~fellrec.federation.balance.BalanceScheduler`).
Ablations: ``heating=False`` -> gamma = 1; ``dynamic=False`` -> FedAvg weights (gamma then plays no part).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fellrec.errors import FellrecError
from fellrec.federation.balance import BalanceScheduler
from fellrec.federation.strategies.base import Strategy, State, check_signals, check_states, row_normalise
from fellrec.federation.strategies.fedavg import fedavg_weights
from fellrec.federation.strategies.similarity import SIMILARITY_ON, cosine_from_gram, similarity_matrix

WEIGHTINGS = ("linear", "softmax")


def flatten_states(states: Mapping[int, State], ids: Sequence[int]) -> Tensor:
    """C x P float64 matrix: row k = client ids[k]'s tensors flattened, in the key order of the first client."""
    keys = list(states[ids[0]])
    return torch.stack([torch.cat([states[c][k].detach().reshape(-1).to("cpu", torch.float64) for k in keys])
                        for c in ids])


def cosine_matrix(v: Tensor) -> Tensor:
    """s_ij = cos(v_i, v_j) for the rows of v; diagonal exactly 1, zero vectors give cosine 0 with the others."""
    return cosine_from_gram(v @ v.T)


def similarity_weights(similarity: Tensor, gammas: Sequence[float], weighting: str = "linear",
                       tau: float = 1.0) -> Tensor:
    """Row-normalised A from a cosine matrix and per-client gammas (both in the same client order)."""
    if weighting == "linear":
        kernel = (similarity + 1.0) / 2.0
    elif weighting == "softmax":
        kernel = torch.exp((similarity - 1.0) / tau)  # = softmax numerator divided by the self term exp(1/tau)
    else:
        raise FellrecError(f"unknown similarity weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    g = torch.as_tensor(list(gammas), dtype=torch.float64)
    a = kernel * g[:, None]
    a.fill_diagonal_(1.0)
    return row_normalise(a)


class FellRec(Strategy):
    """Dynamic aggregation with curriculum heating: each client gets its own aggregate.

    Args:
        similarity_on: what the cosine compares: ``params`` (the release; ~uniform weights, since all clients share
            LoRA A and start from B = 0), ``update`` (needs ``start_states`` in :meth:`aggregate_round`), ``drift``
            (needs :meth:`set_initial`) or ``product`` (per-module B.A; needs :meth:`set_initial` when the state
            holds non-LoRA tensors such as an item table). The bare class keeps the release's ``params``; runs take
            the default of ``fed.similarity_on``.
        similarity_centred: compare each client's vector minus the participants' mean (what it learned beyond what
            all learned); False as in the release.
        similarity_weighting: ``linear`` (release) or ``softmax`` (the paper's "attention").
        tau: temperature of the softmax weighting (> 0); unused by ``linear``.
        heating: False -> gamma = 1 for all clients ("without heating" ablation).
        dynamic: False -> FedAvg weights ("without dynamic aggregation" ablation).
        alpha, beta, temperature, signal: the curriculum heating settings (see BalanceScheduler).
    """

    name = "fellrec"

    def __init__(self, similarity_weighting: str = "linear", tau: float = 1.0, heating: bool = True,
                 dynamic: bool = True, alpha: float = 0.7, beta: float = 5.0, temperature: float = 0.05,
                 signal: str = "train_loss", similarity_on: str = "params", similarity_centred: bool = False):
        if similarity_on not in SIMILARITY_ON:
            raise FellrecError(f"unknown fed.similarity_on {similarity_on!r}; valid: {', '.join(SIMILARITY_ON)}")
        if similarity_weighting not in WEIGHTINGS:
            raise FellrecError(f"unknown similarity weighting {similarity_weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not 0 < tau < float("inf"):
            raise FellrecError(f"softmax temperature tau must be a finite number > 0, got {tau!r}")
        self.similarity_on = similarity_on
        self.similarity_centred = bool(similarity_centred)
        self.similarity_weighting = similarity_weighting
        self.tau = float(tau)
        self.dynamic = bool(dynamic)
        self.balance = BalanceScheduler(alpha=alpha, beta=beta, temperature=temperature, enabled=heating,
                                        signal=signal)
        self.last_gammas: dict[int, float] = {}
        """gamma of each participant in the latest round (for logging)."""

    @property
    def signal(self) -> str:
        """The per-client signal the orchestrator must pass in (raw value; the scheduler turns metrics into 1 - m)."""
        return self.balance.signal

    def aggregation_weights(self, states, num_samples, signals, round_idx, start_states=None):
        ids = check_states(states)
        if not self.dynamic:
            self.last_gammas, self.last_similarity = {}, None
            return fedavg_weights(ids, num_samples)
        # Heating is over the participants only; with heating off the signals are not needed at all.
        if self.balance.enabled:
            check_signals(ids, signals, self.balance.signal)
            gammas = self.balance.gammas({c: signals[c] for c in ids}, round_idx)
        else:
            gammas = {c: 1.0 for c in ids}
        self.last_gammas = gammas
        similarity = similarity_matrix(self.similarity_on, states, ids, start_states, self.initial_state,
                                       self.similarity_centred)
        self.last_similarity = similarity
        return similarity_weights(similarity, [gammas[c] for c in ids], self.similarity_weighting, self.tau)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "similarity_on": self.similarity_on,
                "similarity_centred": self.similarity_centred,
                "similarity_weighting": self.similarity_weighting, "tau": self.tau,
                "dynamic": self.dynamic, "balance": self.balance.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        try:
            balance = state["balance"]
            # Checkpoints written before similarity_on / similarity_centred existed compared the raw parameters.
            self.__init__(state["similarity_weighting"], state["tau"], balance["enabled"], state["dynamic"],
                          balance["alpha"], balance["beta"], balance["temperature"], balance["signal"],
                          state.get("similarity_on", "params"), state.get("similarity_centred", False))
        except KeyError as missing:
            raise FellrecError(f"fellrec strategy state lacks {missing}") from None
