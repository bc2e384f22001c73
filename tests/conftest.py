"""Shared fixtures: small data sets in every supported format, written by the tests themselves."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Offline, always: no test may reach a model or dataset hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run the real `fellrec` CLI in a fresh process."""
    return subprocess.run([sys.executable, "-m", "fellrec", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def cli():
    """The real CLI as a function: cli("data", "stats", ...) -> CompletedProcess."""
    return run_cli


GAME_TITLES = {
    "0": "Super Mario Odyssey",
    "1": "Halo 3",
    "2": 'Tom Clancy\'s "Splinter Cell", Chaos Theory',  # quotes and a comma inside a title
    "3": "Zelda",
    "4": "Portal 2",
    "5": "Tetris",
}


def _prompt_input(titles: list[str]) -> str:
    return "The user has played the following video games before: " + ", ".join(f'"{t}"' for t in titles)


def games_record(user: int, history: list[str], targets: list[str]) -> dict:
    return {"instruction": "Given a list of video games the user has played before, please recommend a new video "
                           "game that the user likes to the user.",
            "input": _prompt_input([GAME_TITLES[i] for i in history]),
            "output": ", ".join(f'"{GAME_TITLES[i]}"' for i in targets) + "\n",
            "user": user}


@pytest.fixture
def games_dir(tmp_path: Path) -> Path:
    """A Games-format directory: JSON arrays for train/valid, JSON lines for test, multi-target test records."""
    root = tmp_path / "games"
    root.mkdir()
    (root / "id2name.txt").write_text("".join(f"{i}\t{t}\n" for i, t in GAME_TITLES.items()))
    train = [games_record(u, ["0", "1"], ["2"]) for u in range(6)] + [games_record(u, ["3"], ["4"]) for u in range(6, 12)]
    valid = [games_record(u, ["0", "2"], ["3"]) for u in range(4)]
    test = [games_record(0, ["1", "2", "3"], ["4", "5"]), games_record(7, ["3", "4"], ["5"]),
            games_record(9, ["2"], ["0", "1", "3"])]
    (root / "train.json").write_text(json.dumps(train, indent=2))
    (root / "valid.json").write_text(json.dumps(valid, indent=2))
    (root / "test.json").write_text("\n".join(json.dumps(r) for r in test) + "\n")
    return root


@pytest.fixture
def csv_dir(tmp_path: Path) -> Path:
    """Own-data CSV files: 6 users x 5 items, timestamps chosen so splits are easy to reason about."""
    root = tmp_path / "csv"
    root.mkdir()
    (root / "items.csv").write_text("item,title,genres\n" + "".join(
        f"i{k},Title {k},{'Drama' if k % 2 else 'Comedy|Drama'}\n" for k in range(8)))
    rows = ["user,item,timestamp"]
    for u in range(6):
        for step in range(5):
            rows.append(f"u{u},i{(u + step) % 8},{100 * step + u}")
    (root / "interactions.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def amazon_dir(tmp_path: Path) -> Path:
    """Raw Amazon 2018 files (gzipped JSON lines): 6 users x 6 items dense, plus noise the 5-core filter drops."""
    root = tmp_path / "amazon"
    root.mkdir()
    meta = [{"asin": f"A{k}", "title": f"Game {k}", "category": ["Video Games", f"Genre{k % 2}"]} for k in range(6)]
    meta.append({"asin": "NOTITLE", "title": ""})
    meta.append({"asin": "RARE", "title": "Rare Game"})
    reviews = []
    for u in range(6):
        for k in range(6):
            reviews.append({"reviewerID": f"U{u}", "asin": f"A{k}", "unixReviewTime": 1000 * k + u, "overall": 5})
    reviews.append({"reviewerID": "U0", "asin": "A0", "unixReviewTime": 99999})  # a repeat: first review counts
    reviews.append({"reviewerID": "U0", "asin": "NOTITLE", "unixReviewTime": 5})
    reviews.append({"reviewerID": "U0", "asin": "RARE", "unixReviewTime": 6})  # 1 review: dropped by 5-core
    reviews.append({"reviewerID": "LONER", "asin": "A1", "unixReviewTime": 7})  # 1 review: dropped by 5-core
    with gzip.open(root / "meta.json.gz", "wt") as f:
        f.write("".join(json.dumps(m) + "\n" for m in meta))
    with gzip.open(root / "reviews.json.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in reviews))
    return root
