"""What every result file is stamped with: the commit, the machine and a short dataset name for its directory."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from fellrec.config import DataArgs


def git_commit(cwd: Path | None = None) -> str:
    """Short HEAD of the repository at `cwd`, noting uncommitted changes to tracked files; 'unknown' outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"


def machine() -> str:
    """Enough to compare timings across machines: platform, cores, Python, torch and its threads, the device."""
    import torch

    device = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU only"
    return (f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), {device}")


def dataset_name(data_args: DataArgs) -> str:
    """A short name for the results directory: ml100k, else the data directory's name, else the source."""
    if data_args.source == "movielens100k":
        return "ml100k"
    return Path(data_args.path).name if data_args.path else data_args.source
