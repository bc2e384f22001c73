"""Round checkpoints: written to a temporary directory and renamed, so a run killed at any moment leaves the last
complete round intact. `fellrec fit --resume RUN_DIR` continues from the newest one."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from fellrec.errors import FellrecError
from fellrec.files import write_atomically

_ROUND_DIR = re.compile(r"^round_(\d{3,})$")
STATE_FILE = "state.pt"


def round_dir(run_dir: Path, round_idx: int) -> Path:
    return run_dir / f"round_{round_idx:03d}"


def rng_states() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def save_round(run_dir: Path, round_idx: int, save_adapters: Callable[[Path], None], state: dict,
               keep: int) -> Path:
    """Write round `round_idx` (adapters + state) atomically; keep only the newest `keep` round directories."""
    target = round_dir(run_dir, round_idx)

    def fill(tmp: Path) -> None:
        save_adapters(tmp / "adapters")
        torch.save({**state, "round": round_idx, "rng": rng_states()}, tmp / STATE_FILE)

    write_atomically(target, fill)
    for old in completed_rounds(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(round_dir(run_dir, old), ignore_errors=True)
    return target


def completed_rounds(run_dir: Path) -> list[int]:
    found = [int(m.group(1)) for p in run_dir.iterdir() if (m := _ROUND_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest_round_dir(run_dir: Path) -> Optional[Path]:
    rounds = completed_rounds(run_dir) if run_dir.is_dir() else []
    return round_dir(run_dir, rounds[-1]) if rounds else None


def load_state(checkpoint: Path) -> dict:
    path = checkpoint / STATE_FILE
    if not path.is_file():
        raise FellrecError("not a round checkpoint (no state.pt)", checkpoint)
    return torch.load(path, weights_only=False)
