"""The one error type the CLI turns into a clean message and a non-zero exit."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class FellrecError(Exception):
    """Bad input or an impossible setting, with the place it was found (file and line where known)."""

    def __init__(self, message: str, path: Optional[Union[str, Path]] = None, line: Optional[int] = None):
        self.path = str(path) if path is not None else None
        self.line = line
        where = self.path or ""
        if where and line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}" if where else message)
