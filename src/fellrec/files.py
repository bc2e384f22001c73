"""Directories written all at once: a reader (or a resumed run) sees the old content or the new, never half."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def write_atomically(target: Path, write: Callable[[Path], None], replace: bool = False) -> Path:
    """Let `write` fill a temporary sibling directory, then rename it to `target`.

    A rename is atomic on one file system, so an interrupted write leaves only a `.partial-` directory that is
    never read. Without `replace`, an existing `target` wins (a concurrent process finished first); with it, the
    old `target` is swapped out and removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    old = None
    try:
        write(tmp)
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result is as readable as any new directory
        if replace and target.exists():
            old = target.parent / f"{tmp.name}.old"
            os.rename(target, old)
        os.rename(tmp, target)
    except OSError:
        if replace or not target.is_dir():  # a concurrent process may have won the rename; else a real error
            raise
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
