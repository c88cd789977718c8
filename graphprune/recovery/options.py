"""Plain-data options of the recovery stage: the schedule, checkpoints, BatchNorm handling, what is trained,
the device."""
from __future__ import annotations

import enum
import math
import os
from dataclasses import dataclass

import torch

from ..errors import InputError


def _positive(value, name: str, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _count(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class Schedule:
    """How long and how fast: `steps` optimizer steps or `epochs` passes over the data (one of them;
    neither: 1 epoch). AdamW at `lr`, linear warm-up over the first `warmup` share of the steps, then
    cosine decay to 0; `accumulate` micro-batches per step (per process); gradients clipped to
    `max_grad_norm` (None: not clipped, still checked for NaN/inf)."""

    steps: int | None = None
    epochs: int | None = None
    lr: float = 1e-4
    warmup: float = 0.05
    weight_decay: float = 0.0
    accumulate: int = 1
    max_grad_norm: float | None = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.steps is not None and self.epochs is not None:
            raise InputError("give steps or epochs, not both")
        if self.steps is not None:
            _count(self.steps, "steps")
        if self.epochs is not None:
            _count(self.epochs, "epochs")
        _positive(self.lr, "lr")
        _positive(self.weight_decay, "weight_decay", allow_zero=True)
        if not (isinstance(self.warmup, (int, float)) and 0 <= self.warmup < 1):
            raise InputError(f"warmup is the share of steps spent warming up, in [0, 1); got {self.warmup!r}")
        _count(self.accumulate, "accumulate")
        if self.max_grad_norm is not None:
            _positive(self.max_grad_norm, "max_grad_norm")

    def total_steps(self, batches: int, world: int) -> int:
        """Optimizer steps: `steps`, or `epochs` passes of `batches` shared by `world` processes."""
        if self.steps is not None:
            return self.steps
        return max(1, (self.epochs or 1) * math.ceil(batches / (world * self.accumulate)))

    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier of `lr` at optimizer step `step` (0-based): warm-up, then cosine to 0."""
        warm = int(self.warmup * total)
        if step < warm:
            return (step + 1) / (warm + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


class BatchNormMode(enum.Enum):
    """BatchNorm during recovery. TRAIN: batch statistics, running statistics updated (plain fine-tuning).
    FROZEN: running statistics used and kept. REESTIMATE: frozen while training, then re-estimated on
    the data at the end (cumulative mean over up to 32 batches)."""

    TRAIN = "train"
    FROZEN = "frozen"
    REESTIMATE = "reestimate"


@dataclass(frozen=True)
class Checkpoints:
    """Atomic checkpoints `directory`/recovery.pt every `every` steps (0: only at the end); `resume`
    continues from the one there. None: no checkpoints."""

    directory: str | None = None
    every: int = 0
    resume: bool = False

    def __post_init__(self):
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 0:
            raise InputError(f"Checkpoints.every must be an int >= 0, got {self.every!r}")
        if self.resume and self.directory is None:
            raise InputError("resume=True needs Checkpoints(directory=...) to resume from")


class Trainable(enum.Enum):
    """What recovery trains. ALL: every parameter of the student. LORA: low-rank adapters on its nn.Linear
    layers only (recovery.lora; options in LoRA), merged into the weights at the end."""

    ALL = "all"
    LORA = "lora"


@dataclass(frozen=True)
class LoRA:
    """Low-rank adapters for trainable="lora": each adapted nn.Linear computes W x + (alpha / rank) B A x, with
    A (rank x in) and B (out x rank, zero at the start) trained and W frozen; `dropout` on the adapter's
    input; `targets` the module names to adapt (None: every nn.Linear the student calls, recovery.lora)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None

    def __post_init__(self):
        _count(self.rank, "LoRA.rank")
        _positive(self.alpha, "LoRA.alpha")
        dropout = self.dropout
        if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1):
            raise InputError(f"LoRA.dropout is a probability in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        if self.targets is not None:
            targets = tuple(self.targets)
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise InputError(f"LoRA.targets must be None or module names (non-empty strings), got {self.targets!r}")
            object.__setattr__(self, "targets", targets)

    @property
    def scale(self) -> float:
        """The factor of B A in the adapted layer, and in its merged delta: alpha / rank."""
        return self.alpha / self.rank


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto": the process's CUDA device when CUDA is present (cuda:LOCAL_RANK under torchrun), else the CPU."""
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but CUDA is not available here; use device='auto' or 'cpu'")
    return resolved
