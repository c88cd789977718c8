"""A one-line progress display (step, loss, ETA), shown only on a terminal."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """Rewrites one line of `stream` per step; silent unless `enabled` (default: `stream` is a TTY)."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool | None = None, first: int = 0):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.first, self.start = total, first, time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        done = step - self.first
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (self.total - step) if done else 0.0
        self.stream.write(f"\rrecover {step}/{self.total}  loss {loss:.4g}  elapsed {_clock(elapsed)}  "
                          f"ETA {_clock(eta)} ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
