"""Build a strategy from its name and options (what the config's federation section holds)."""

from __future__ import annotations

import inspect
from typing import Any

from fellrec.errors import FellrecError
from fellrec.federation.strategies.base import Strategy
from fellrec.federation.strategies.centralized import Centralized
from fellrec.federation.strategies.fedavg import FedAvg
from fellrec.federation.strategies.fedprox import FedProx
from fellrec.federation.strategies.fellrec import FellRec
from fellrec.federation.strategies.local import Local

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (Local, FedAvg, FedProx, Centralized, FellRec)}
"""Strategy name -> class."""


def strategy_options(name: str) -> list[str]:
    """The keyword options strategy ``name`` accepts."""
    return [p for p in inspect.signature(_lookup(name).__init__).parameters if p != "self"]


def build_strategy(name: str, **options: Any) -> Strategy:
    """A new strategy; an unknown name or an option the strategy does not take is a FellrecError (catches typos)."""
    cls = _lookup(name)
    accepted = strategy_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise FellrecError(f"strategy {name!r} does not take option(s) {unknown}; "
                           f"it accepts: {', '.join(accepted) or 'no options'}")
    return cls(**options)


def _lookup(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise FellrecError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
