"""Curriculum heating (METHOD.md section 4, after CoHeat): how much each client learns from the others.

    l~_i    = softmax_i(l_i / T)                    over the clients taking part in the round
    gamma_i = tanh(alpha / l~_i ** ((t + 1) / beta))

A client whose signal is worse than the others' (large l~_i) gets a small gamma early and learns mostly from
itself; since l~_i < 1, the power shrinks towards 0 as rounds t pass, so every gamma rises towards 1 ("heating").

Decisions (METHOD.md): the exponent is (t + 1) / beta (the release's ``epoch+1/beta`` is a precedence slip), and
heating applies for every beta, 1 included (the release skips it when beta == 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from fellrec.errors import FellrecError

SIGNALS = ("train_loss", "val_loss", "recall", "ndcg")
"""Signals the heating can be driven by. Ranking metrics enter as 1 - metric, so that higher means worse."""

_RANKING = {"recall", "ndcg"}


class BalanceScheduler:
    """Turns per-client signals into heating factors gamma_i in (0, 1] for one round.

    Args:
        alpha: scale of the heating (0.7 in the paper); larger alpha -> gammas closer to 1 from the start.
        beta: speed of the heating in rounds (5 in the paper); larger beta -> slower heating.
        temperature: T of the softmax over clients (0.05 in the paper); smaller T -> sharper contrast.
        enabled: False gives gamma = 1 for every client (the "without heating" ablation).
        signal: what l_i is: ``train_loss`` (paper), ``val_loss``, or ``recall`` / ``ndcg`` (used as 1 - metric).
    """

    def __init__(self, alpha: float = 0.7, beta: float = 5.0, temperature: float = 0.05, enabled: bool = True,
                 signal: str = "train_loss"):
        self.alpha = _positive("alpha", alpha)
        self.beta = _positive("beta", beta)
        self.temperature = _positive("temperature", temperature)
        self.enabled = bool(enabled)
        self.signal = _signal_name(signal)

    def badness(self, signals: Mapping[int, float]) -> dict[int, float]:
        """The signals as "higher is worse" values: losses as they are, ranking metrics as 1 - metric."""
        if not signals:
            raise FellrecError(f"no {self.signal} values given for the balance strategy")
        out = {}
        for c, raw in signals.items():
            try:
                v = float(raw)
            except (TypeError, ValueError):
                raise FellrecError(f"{self.signal} of client {c} is not a number: {raw!r}") from None
            if not math.isfinite(v):
                raise FellrecError(f"{self.signal} of client {c} is {v} (NaN or inf): cannot balance on it")
            if self.signal in _RANKING:
                if not 0.0 <= v <= 1.0:
                    raise FellrecError(f"{self.signal} of client {c} must lie in [0, 1], got {v}")
                v = 1.0 - v
            out[c] = v
        return out

    def gammas(self, signals: Mapping[int, float], round_idx: int) -> dict[int, float]:
        """gamma_i of every client in ``signals`` (the round's participants) for round ``round_idx`` (0-based)."""
        if isinstance(round_idx, bool) or not isinstance(round_idx, int) or round_idx < 0:
            raise FellrecError(f"round index must be an integer >= 0, got {round_idx!r}")
        bad = self.badness(signals)
        if not self.enabled:
            return {c: 1.0 for c in bad}
        ids = list(bad)
        l = torch.tensor([bad[c] for c in ids], dtype=torch.float64)
        # log-softmax subtracts the max: stable for the large l / T values T = 0.05 produces.
        log_share = torch.log_softmax(l / self.temperature, dim=0)
        exponent = (round_idx + 1) / self.beta
        # alpha / l~ ** e computed in log space; an underflowing share gives inf, and tanh(inf) = 1.
        gamma = torch.tanh(self.alpha * torch.exp(-exponent * log_share))
        return dict(zip(ids, gamma.tolist()))

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's settings (it keeps no other state: the round index is passed in)."""
        return {"alpha": self.alpha, "beta": self.beta, "temperature": self.temperature, "enabled": self.enabled,
                "signal": self.signal}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`, with the same checks as the constructor."""
        missing = sorted({"alpha", "beta", "temperature", "enabled", "signal"} - set(state))
        if missing:
            raise FellrecError(f"balance scheduler state lacks {missing}")
        self.__init__(state["alpha"], state["beta"], state["temperature"], state["enabled"], state["signal"])

    def __repr__(self) -> str:
        return "BalanceScheduler(" + ", ".join(f"{k}={v!r}" for k, v in self.state_dict().items()) + ")"


def _positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise FellrecError(f"balance {name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise FellrecError(f"balance {name} must be a finite number > 0, got {value!r}")
    return v


def _signal_name(signal: str) -> str:
    if signal not in SIGNALS:
        raise FellrecError(f"unknown balance signal {signal!r}; valid: {', '.join(SIGNALS)}")
    return signal
