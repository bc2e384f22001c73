"""What a run keeps: each client's best adapter (the Tracker picks it by validation loss and says when to stop
early) and the round checkpoints `fellrec fit --resume` continues from."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from fellrec.errors import FellrecError
from fellrec.federation.checkpoint import latest_round_dir, load_state, save_round
from fellrec.files import write_atomically


@dataclass
class Tracker:
    """Best adapter per client (by its validation loss) and early stopping on the weighted mean."""

    best_val: dict = field(default_factory=dict)
    best_round: dict = field(default_factory=dict)
    best_mean: float = math.inf
    rounds_without_gain: int = 0

    def update(self, round_idx: int, val: dict[int, float], weights: dict[int, int]) -> tuple[list[int], float]:
        """Record a round's validation losses; returns the clients that improved and the weighted mean."""
        improved = [c for c, v in val.items() if math.isfinite(v) and v < self.best_val.get(c, math.inf)]
        for c in improved:
            self.best_val[c], self.best_round[c] = val[c], round_idx
        counted = [c for c, v in val.items() if math.isfinite(v) and weights.get(c, 0) > 0]
        mean = (sum(val[c] * weights[c] for c in counted) / sum(weights[c] for c in counted)) if counted else math.nan
        if math.isfinite(mean) and mean < self.best_mean:
            self.best_mean, self.rounds_without_gain = mean, 0
        else:
            self.rounds_without_gain += 1
        return improved, mean


def save_best(run_dir: Path, store, improved: list[int], tracker: Tracker) -> None:
    """The improved clients' live adapters replace their best ones (atomically); best.json says from which round."""
    for c in improved:
        write_atomically(run_dir / "best" / f"client_{c}", lambda tmp: store.save(c, tmp), replace=True)
    (run_dir / "best").mkdir(parents=True, exist_ok=True)
    (run_dir / "best" / "best.json").write_text(json.dumps(
        {"best_round": tracker.best_round, "best_val_loss": tracker.best_val}, indent=2))


def save_checkpoint(run_dir: Path, round_idx: int, store, ids: list[int], state: dict, keep: int) -> None:
    """Every client's adapter and the run's `state` (strategy, tracker, optimizer states) for round `round_idx`."""
    def save_adapters(directory: Path) -> None:
        for c in ids:
            store.save(c, directory / f"client_{c}")

    save_round(run_dir, round_idx, save_adapters, {**state, "clients": ids}, keep)


def load_checkpoint(run_dir: Path, store, ids: list[int]) -> dict:
    """Load the newest complete round's adapters into `store`; returns its state (with `round` and `rng`)."""
    latest = latest_round_dir(run_dir)
    if latest is None:
        raise FellrecError("nothing to resume: no complete round checkpoint", run_dir)
    state = load_state(latest)
    if state["clients"] != ids:
        raise FellrecError(f"checkpoint clients {state['clients']} differ from this run's {ids}", latest)
    for c in ids:
        store.load(c, latest / "adapters" / f"client_{c}")
    return state
