"""The Strategy base class: the hooks every federated algorithm overrides (Flower style), plus input checks.

Conventions shared by every strategy:

* An adapter *state* is an ordered ``dict[str, Tensor]`` of a client's trainable LoRA tensors; every client has the
  same keys and shapes.
* Clients are always handled in **ascending id order**: row/column ``k`` of a weight matrix belongs to the ``k``-th
  smallest participating client id. Sorting makes the result independent of the order a caller's dicts happen to
  be in: permuting the clients permutes the result.
* Aggregation reads a frozen snapshot of every input (Jacobi order) and writes fresh tensors; inputs are never
  modified in place.
* Only the clients passed in (the round's sample) take part. In :meth:`Strategy.aggregate_round`, clients outside
  the sample keep their adapter (the very same tensors), unless the strategy keeps one global model
  (``global_model = True``, FedAvg/FedProx): then every client receives the new global adapter.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import torch
from torch import Tensor

from fellrec.errors import FellrecError

State = dict[str, Tensor]
"""One client's adapter: parameter name -> tensor."""

# Tolerance on "each row of a weight matrix sums to 1": float64 arithmetic is far tighter than this.
ROW_SUM_TOL = 1e-9


class Strategy:
    """Base class of the federated strategies. Subclasses override one or two hooks.

    Hooks:
      * :meth:`aggregation_weights` -> C x C matrix, row i = the weights that build client i's new adapter.
      * :meth:`aggregate` -> new states from a weight matrix (tensor by tensor, Jacobi order).
      * :meth:`local_loss_term` -> extra term added to a client's local training loss (0 by default).
      * :meth:`state_dict` / :meth:`load_state_dict` -> what must survive a checkpoint (plain Python values).
    """

    name: str = "base"
    global_model: bool = False
    """True when the strategy keeps one shared adapter: non-sampled clients then also receive it."""
    last_weights: Optional[Tensor] = None
    """The latest round's aggregation matrix (participants in ascending id order), for the logs."""
    last_similarity: Optional[Tensor] = None
    """The latest round's C x C cosine matrix (participants ascending), for strategies that compare clients."""
    initial_state: Optional[State] = None
    """The adapter every client started from (see :meth:`set_initial`); read only by strategies that need it."""
    signal: Optional[str] = None
    """Name of the per-client signal the strategy reads (None: it needs none)."""

    def __init__(self) -> None:
        """Strategies without options take none (``build_strategy`` reads the accepted options from here)."""

    # ----- hooks -------------------------------------------------------------------------------------------------
    def aggregation_weights(self, states: Mapping[int, State], num_samples: Mapping[int, int],
                            signals: Optional[Mapping[int, float]], round_idx: int,
                            start_states: Optional[Mapping[int, State]] = None) -> Tensor:
        """Return a float64 C x C matrix, rows and columns in ascending client id order, each row summing to 1.

        ``start_states`` holds each participant's adapter at the start of the round (None when the caller has not
        given them; strategies that do not need them ignore them).
        """
        raise NotImplementedError

    def set_initial(self, state: Mapping[str, Tensor]) -> None:
        """Record the common initial adapter (a detached CPU copy). The caller sets it again on resume: it is
        rebuilt from the seed like every client's first adapter, so checkpoints need not carry it."""
        self.initial_state = {k: t.detach().to("cpu").clone() for k, t in state.items()}

    def aggregate(self, states: Mapping[int, State], weights: Tensor) -> dict[int, State]:
        """New state of every client in ``states``: ``theta_i = sum_j weights[i, j] * theta_j``, tensor by tensor.

        LoRA A and B are averaged separately (each tensor on its own, as the release does). All sums run in float64
        over the input snapshot, in ascending id order, and are cast back to each tensor's dtype.
        """
        ids = check_states(states)
        weights = check_weights(weights, len(ids))
        rows = weights.tolist()
        keys = list(states[ids[0]])
        out: dict[int, State] = {}
        for i, row in zip(ids, rows):
            new: State = {}
            for key in keys:
                ref = states[ids[0]][key]
                acc = torch.zeros(ref.shape, dtype=torch.float64, device=ref.device)
                for j, w in zip(ids, row):
                    if w != 0.0:  # skipping zero weights makes identity rows an exact copy
                        acc.add_(states[j][key].to(torch.float64), alpha=w)
                new[key] = acc.to(ref.dtype)
            out[i] = new
        return out

    def local_loss_term(self, params: Mapping[str, Tensor], global_params: Mapping[str, Tensor]) -> Tensor:
        """Extra local-training loss; ``global_params`` is the adapter the client started the round from."""
        first = next(iter(params.values()), None)
        return first.new_zeros(()) if first is not None else torch.zeros(())

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this strategy, as plain (JSON-friendly) Python values."""
        return {"name": self.name}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses a checkpoint written by another strategy."""
        if state.get("name") != self.name:
            raise FellrecError(f"checkpoint holds strategy {state.get('name')!r}, this run uses {self.name!r}")

    # ----- the round, built from the hooks ----------------------------------------------------------------------
    def aggregate_round(self, states: Mapping[int, State], num_samples: Mapping[int, int],
                        signals: Optional[Mapping[int, float]] = None, round_idx: int = 0,
                        participants: Optional[Iterable[int]] = None,
                        start_states: Optional[Mapping[int, State]] = None) -> dict[int, State]:
        """One server step over all clients' ``states``; only ``participants`` (default: all) take part.

        ``start_states`` (optional): each participant's adapter at the start of this round, for strategies that
        compare what the clients uploaded (FELLRec with ``similarity_on="update"``); others ignore it.

        Returns a state for every client in ``states``, in the same order. Participants get their aggregate.
        Others keep their adapter (same tensor objects), except under a global-model strategy, where they also
        receive the new global adapter (their own copy of the one every participant got).
        """
        check_states(states)
        check_round(round_idx)
        sample = list(states) if participants is None else list(participants)
        if not sample:
            raise FellrecError("no participating clients in this round")
        unknown = sorted(set(sample) - set(states))
        if unknown:
            raise FellrecError(f"participants {unknown} have no adapter state (clients: {sorted(states)})")
        part = {c: states[c] for c in sorted(set(sample))}
        weights = self.aggregation_weights(part, num_samples, signals, round_idx, start_states=start_states)
        self.last_weights = weights  # for the logs: row i = the weights that built participant i's adapter
        new = self.aggregate(part, weights)
        shared = next(iter(new.values()))
        return {c: new[c] if c in new else (_copy(shared) if self.global_model else states[c]) for c in states}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.state_dict().items() if k != "name")
        return f"{type(self).__name__}({fields})"


def _copy(state: State) -> State:
    """A state with fresh tensors, so no two clients ever share storage."""
    return {k: t.clone() for k, t in state.items()}


# ----- input checks shared by the strategies ------------------------------------------------------------------------
def client_order(states: Mapping[int, Any]) -> list[int]:
    """The canonical client order: ascending id."""
    return sorted(states)


def check_states(states: Mapping[int, State]) -> list[int]:
    """Check that every client has the same floating-point tensors (keys and shapes), all finite; return the ids."""
    if not states:
        raise FellrecError("no client states to aggregate")
    ids = client_order(states)
    ref_id = ids[0]
    ref = states[ref_id]
    if not ref:
        raise FellrecError(f"client {ref_id} has an empty adapter state")
    for c in ids:
        st = states[c]
        if set(st) != set(ref):
            diff = sorted(set(st) ^ set(ref))
            raise FellrecError(f"client {c} and client {ref_id} hold different adapter tensors: {diff}")
        for key, t in st.items():
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise FellrecError(f"client {c}: {key!r} is not a floating-point tensor")
            if t.shape != ref[key].shape:
                raise FellrecError(f"client {c}: {key!r} has shape {tuple(t.shape)}, "
                                   f"client {ref_id} has {tuple(ref[key].shape)}")
            # A diverged client would silently poison every aggregate it enters.
            if not torch.isfinite(t).all():
                raise FellrecError(f"client {c}: {key!r} holds NaN or inf values (did local training diverge?)")
    return ids


def check_weights(weights: Tensor, n: int) -> Tensor:
    """A float64 copy of an n x n, non-negative, finite, row-stochastic weight matrix."""
    if not isinstance(weights, Tensor) or tuple(weights.shape) != (n, n):
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise FellrecError(f"aggregation weights must be a {n} x {n} tensor, got {shape}")
    w = weights.detach().to("cpu", torch.float64)
    if not torch.isfinite(w).all() or (w < 0).any():
        raise FellrecError("aggregation weights must be finite and non-negative")
    if (w.sum(dim=1) - 1).abs().max() > ROW_SUM_TOL:
        raise FellrecError(f"each row of the aggregation weights must sum to 1, got {w.sum(dim=1).tolist()}")
    return w


def check_round(round_idx: int) -> int:
    """Rounds are counted 0, 1, 2, ..."""
    if isinstance(round_idx, bool) or not isinstance(round_idx, int) or round_idx < 0:
        raise FellrecError(f"round index must be an integer >= 0, got {round_idx!r}")
    return round_idx


def check_num_samples(ids: list[int], num_samples: Optional[Mapping[int, int]]) -> list[int]:
    """Sample counts of ``ids`` in that order: positive integers, one per client."""
    if num_samples is None:
        raise FellrecError("this strategy needs the clients' sample counts (num_samples)")
    counts = []
    for c in ids:
        if c not in num_samples:
            raise FellrecError(f"no sample count for client {c}")
        n = num_samples[c]
        try:
            if isinstance(n, bool):
                raise TypeError
            n = operator.index(n)
        except TypeError:
            raise FellrecError(f"sample count of client {c} must be an integer, got {n!r}") from None
        if n <= 0:
            raise FellrecError(f"sample count of client {c} must be > 0, got {n}")
        counts.append(n)
    return counts


def check_signals(ids: list[int], signals: Optional[Mapping[int, float]], what: str = "signal") -> list[float]:
    """Finite float signal of every client in ``ids``, in that order."""
    if not signals:
        raise FellrecError(f"no per-client {what} values given")
    values = []
    for c in ids:
        if c not in signals:
            raise FellrecError(f"no {what} value for client {c}")
        try:
            v = float(signals[c])
        except (TypeError, ValueError):
            raise FellrecError(f"{what} of client {c} is not a number: {signals[c]!r}") from None
        if not math.isfinite(v):
            raise FellrecError(f"{what} of client {c} is {v} (NaN or inf)")
        values.append(v)
    return values


def row_normalise(a: Tensor) -> Tensor:
    """Divide each row by its sum (every row here has a positive diagonal, so sums are > 0)."""
    return a / a.sum(dim=1, keepdim=True)
