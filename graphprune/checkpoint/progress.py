"""Progress of prune_checkpoint, stage by stage: a frozen ProgressEvent per unit of work done, with the
elapsed time and an ETA, handed to the caller's callback (none: silent).

    stage        a step is               done / total count
    SCORING      a shard's tensors read  bytes read of the tensors the criterion reads
    CALIBRATION  a decoder layer run     layers (Wanda only)
    WRITING      a pruned shard written  bytes written of the pruned tensors (known before the first is written)

    eta = elapsed * (total - done) / done    (the rate of the stage so far; seconds)

Wanda scores groups with no known layer input by L1 magnitude: a second SCORING stage when there are any.
The meta analysis, the plan and the config check between the stages read no tensor and report no steps.
A callback that raises aborts the run as any error does: nothing is written (atomic.StagedDirectory).
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Callable


class Stage(enum.Enum):
    SCORING = "scoring"
    CALIBRATION = "calibration"
    WRITING = "writing"


STEP_NAMES = {Stage.SCORING: "shard", Stage.CALIBRATION: "layer", Stage.WRITING: "shard"}


@dataclass(frozen=True)
class ProgressEvent:
    """`step` of `steps` (shards or layers) done in `stage`; `done` of `total` (bytes, or layers for
    CALIBRATION); `elapsed` seconds since the stage began."""

    stage: Stage
    step: int
    steps: int
    done: int
    total: int
    elapsed: float

    @property
    def eta(self) -> float:
        """Seconds left in the stage at its rate so far (0 once done; inf before anything is done)."""
        if self.done >= self.total:
            return 0.0
        return self.elapsed * (self.total - self.done) / self.done if self.done else float("inf")

    def line(self) -> str:
        """'writing: shard 2/4, 3.10/7.48 GiB, 41 s elapsed, ETA 58 s' (MiB below 1 GiB; CALIBRATION: no bytes)."""
        scale, unit = (2**30, "GiB") if self.total >= 2**30 else (2**20, "MiB")
        amount = "" if self.stage is Stage.CALIBRATION else f", {self.done / scale:.2f}/{self.total / scale:.2f} {unit}"
        return (f"{self.stage.value}: {STEP_NAMES[self.stage]} {self.step}/{self.steps}{amount}, "
                f"{self.elapsed:.0f} s elapsed, ETA {self.eta:.0f} s")


Callback = Callable[[ProgressEvent], None]


@dataclass
class StageProgress:
    """One stage's counters: `advance(amount)` after each step calls the callback with the event."""

    callback: Callback | None
    stage: Stage
    steps: int
    total: int
    started: float
    step: int = 0
    done: int = 0

    def advance(self, amount: int) -> None:
        self.step += 1
        self.done += amount
        if self.callback is not None:
            self.callback(ProgressEvent(self.stage, self.step, self.steps, self.done, self.total,
                                        time.perf_counter() - self.started))


@dataclass(frozen=True)
class Tracker:
    """What prune_checkpoint hands its stages: `stage(...)` starts one's clock and counters."""

    callback: Callback | None = None

    def stage(self, stage: Stage, steps: int, total: int) -> StageProgress:
        return StageProgress(self.callback, stage, steps, total, time.perf_counter())


SILENT = Tracker()
