"""Atomic file writes: write a temp file next to the destination, then os.replace it into place.

A reader never sees a half-written file, and a failure leaves no file and no temp file.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, BinaryIO, Callable

from .errors import GraphPruneError


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call `write(binary file)` on a temp file next to `path`, then move it into place."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise GraphPruneError(f"cannot write {path}: directory {directory!r} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_atomically(path, lambda f: f.write(json.dumps(data, indent=1).encode()))
