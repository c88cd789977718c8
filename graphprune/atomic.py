"""Atomic writes: a file or a whole directory is built next to its destination, then renamed into place.

A reader never sees a half-written file or a half-filled directory, and a failure leaves
neither the destination nor any temporary behind. Files and directories get the modes a
plain `open()`/`mkdir()` would give them (0o666 / 0o777 minus the umask, so 0644 / 0755
with the usual umask 022), not the private 0600 / 0700 of `tempfile`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, BinaryIO, Callable

from .errors import GraphPruneError

STAGING_PREFIX = ".graphprune-"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode open()/mkdir() would create: 0o666 (files) or 0o777 (directories) minus the umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call `write(binary file)` on a temp file next to `path`, then move it into place."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise GraphPruneError(f"cannot write {path}: directory {directory!r} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_atomically(path, lambda f: f.write(json.dumps(data, indent=1).encode()))


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _contains(outer: str, inner: str) -> bool:
    return os.path.commonpath([outer, inner]) == outer


class StagedDirectory:
    """An output directory filled in a hidden sibling (`.graphprune-*`), then moved to `path` in one rename.

    Created before any work, so a destination that cannot be written fails first. `path`
    may have missing parents (created at commit). An existing `path` must be an empty
    directory unless `replace=True`, which swaps the old directory out whole (two renames)
    and deletes it. Use as a context manager: leaving it without `commit()` (an error, an
    interrupt) deletes the staging directory, and nothing else was touched.
    """

    def __init__(self, path: str | os.PathLike, replace: bool = False, flag: str = "--out"):
        self.path = os.path.abspath(os.fspath(path))
        self.replace = replace
        self.flag = flag
        self._check_destination()
        anchor = _nearest_existing(os.path.dirname(self.path))
        if not os.path.isdir(anchor):
            raise GraphPruneError(f"cannot write to {self.path!r}: {anchor!r} is a file, not a directory; "
                                  f"pass an {flag} path whose parents are directories")
        try:
            self.staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=anchor)
        except OSError as exc:
            raise GraphPruneError(f"cannot write to {self.path!r}: cannot create a directory in {anchor!r} "
                                  f"({exc.strerror}); pass an {flag} path in a writable place") from exc

    def _check_destination(self) -> None:
        if not os.path.lexists(self.path):
            return
        if not os.path.isdir(self.path) or os.path.islink(self.path):
            raise GraphPruneError(f"{self.flag} {self.path!r} exists and is not a directory; pass a directory path")
        if not os.listdir(self.path):
            return
        if not self.replace:
            raise GraphPruneError(f"{self.flag} {self.path!r} exists and is not empty; pass --force to replace it "
                                  "whole, or choose a new directory")
        for protected in (os.getcwd(), os.path.expanduser("~")):
            if _contains(self.path, os.path.abspath(protected)):
                raise GraphPruneError(f"--force would delete {self.path!r}, which contains {protected!r}; "
                                      f"pass a dedicated {self.flag} directory")

    def file(self, name: str) -> str:
        """Where to write output file `name` (inside the staging directory)."""
        return os.path.join(self.staging, name)

    def commit(self) -> list[str]:
        """Move the staged files to `path` (replacing it when allowed); returns the file names written."""
        names = sorted(os.listdir(self.staging))
        for name in names:
            os.chmod(self.file(name), default_mode(os.path.isdir(self.file(name))))
        os.chmod(self.staging, default_mode(directory=True))
        self._check_destination()  # again: it may have changed while we worked
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        old = None
        if os.path.isdir(self.path) and os.listdir(self.path):
            old = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=os.path.dirname(self.path))
            os.rename(self.path, os.path.join(old, "replaced"))
        try:
            os.rename(self.staging, self.path)  # onto a missing or empty directory
        except OSError:
            if old:
                os.rename(os.path.join(old, "replaced"), self.path)
            raise
        finally:
            if old:
                shutil.rmtree(old, ignore_errors=True)
        return names

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> "StagedDirectory":
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()  # after commit() the staging directory is gone already
