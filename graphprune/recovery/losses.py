"""Recovery losses: distillation from the dense model's outputs and features, and the task loss.

    output  KL:      T^2 * KL(softmax(t / T) || softmax(s / T)), rows over the last dim (logits)
            HIDDEN:  ||s - t||^2 / ||t||^2 (mean squares) + (1 - cos(s, t)), rows over the last dim
                     (embeddings, hidden states; scale-free, so weights mean the same for any width)
    tokens           HIDDEN over the per-token states (`token_readout`, default the primary output, e.g.
                     last_hidden_state, times the batch's attention_mask): every token, not only the pooled
                     readout; the cosine leaves out the teacher's all-zero (padding) rows
    features         mean over matched layers of ||s_l - view_l(t_l)||^2 / ||view_l(t_l)||^2, the
                     teacher's activation read at the student's kept channels (recovery.taps)
    task             task_fn(output, labels), default cross-entropy of the rows of the primary output
                     against the labels (-100 ignored)
    total = output_weight * output + tokens * tokens + features * features + task * task
"""
from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import InputError
from .fidelity import IGNORE_LABEL, primary_output, rows
from .taps import Tap


class OutputLoss(enum.Enum):
    """How the compared outputs are distilled. AUTO: KL for logits (a mapping with "logits", or a 2-D
    tensor), HIDDEN otherwise (and whenever a readout picks the compared tensor)."""

    AUTO = "auto"
    KL = "kl"
    HIDDEN = "hidden"
    NONE = "none"


FEATURES_BY_DEFAULT = 1.0
"""Weight of channel-matched feature distillation when none is given. Measured at equal steps
(`bench/recovery_minilm.py --compare-features`, `bench/recovery_digits.py`), features + output beat the
output alone on fidelity, so they are on by default."""


def _weight(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InputError(f"Losses.{name} must be a finite number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Losses:
    """What recovery minimises (see the module docstring). `task=None`: 1.0 when the batches carry labels,
    else 0; a positive `task` requires labels. `layers`: node names to match (None: recovery.taps'
    default, at most `max_layers`). `readout(output, batch) -> tensor`: the compared output; `tokens` the weight
    of the token-level loss, `token_readout(output, batch) -> (..., tokens, width)` its states."""

    output: OutputLoss | str = OutputLoss.AUTO
    output_weight: float = 1.0
    temperature: float = 2.0
    features: float = FEATURES_BY_DEFAULT
    layers: tuple[str, ...] | None = None
    max_layers: int = 8
    task: float | None = None
    task_fn: Callable | None = None
    readout: Callable | None = None
    tokens: float = 0.0
    token_readout: Callable | None = None

    def __post_init__(self):
        try:
            object.__setattr__(self, "output", OutputLoss(self.output))
        except ValueError:
            raise InputError(f"Losses.output must be one of {[o.value for o in OutputLoss]}, "
                             f"got {self.output!r}") from None
        _weight(self.output_weight, "output_weight"), _weight(self.features, "features"), _weight(self.tokens, "tokens")
        if self.task is not None:
            _weight(self.task, "task")
        if _weight(self.temperature, "temperature") == 0:
            raise InputError("Losses.temperature must be > 0")
        if not isinstance(self.max_layers, int) or self.max_layers < 1:
            raise InputError(f"Losses.max_layers must be a positive int, got {self.max_layers!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))


def kl_loss(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    s, t = rows(s) / temperature, rows(t) / temperature
    return F.kl_div(s.log_softmax(1), t.log_softmax(1), log_target=True, reduction="batchmean") * temperature ** 2


def relative_mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s, t = s.float(), t.float()
    return (s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12)


def hidden_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return relative_mse(s, t) + (1 - F.cosine_similarity(rows(s), rows(t), dim=1)).mean()


def token_states(losses: Losses, output: Any, raw: Any) -> torch.Tensor:
    """The per-token states the token loss compares: `token_readout`, else the primary output with padding rows
    zeroed by the batch's attention_mask (when the batch is a mapping that has one)."""
    if losses.token_readout is not None:
        return losses.token_readout(output, raw)
    states = primary_output(output)
    mask = raw.get("attention_mask") if isinstance(raw, Mapping) else None
    if isinstance(mask, torch.Tensor) and mask.shape == states.shape[:-1]:
        states = states * mask.unsqueeze(-1).to(states.dtype)
    return states


def token_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """HIDDEN over token rows; the cosine over the rows the teacher has (its all-zero rows are padding)."""
    s, t = rows(s), rows(t)
    real = t.abs().sum(1) > 0
    return relative_mse(s, t) + (1 - F.cosine_similarity(s[real], t[real], dim=1)).mean()


def feature_loss(student: tuple, teacher: tuple, taps: tuple[Tap, ...]) -> torch.Tensor:
    """Mean over matched layers of the relative squared error at the kept channels."""
    parts = [relative_mse(s, tap.teacher_view(t)) for s, t, tap in zip(student, teacher, taps)]
    return torch.stack(parts).mean()


def output_kind(losses: Losses, output: Any) -> OutputLoss:
    """AUTO resolved for this model's output (see OutputLoss)."""
    if losses.output is not OutputLoss.AUTO:
        return losses.output
    if losses.readout is not None:
        return OutputLoss.HIDDEN
    if isinstance(output, Mapping):
        return OutputLoss.KL if isinstance(output.get("logits"), torch.Tensor) else OutputLoss.HIDDEN
    return OutputLoss.KL if primary_output(output).ndim == 2 else OutputLoss.HIDDEN


def task_loss(losses: Losses, output: Any, labels: Any) -> torch.Tensor:
    if losses.task_fn is not None:
        return losses.task_fn(output, *labels) if isinstance(labels, tuple) else losses.task_fn(output, labels)
    logits = primary_output(output)
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.numel() != rows(logits).shape[0]:
        raise InputError(f"the default task loss is cross-entropy of the output's rows ({tuple(logits.shape)}) "
                         f"against integer class labels, one per row; got {type(labels).__name__}"
                         + (f" of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else "")
                         + "; pass Losses(task_fn=callable(output, labels) -> loss)")
    return F.cross_entropy(rows(logits), labels.reshape(-1), ignore_index=IGNORE_LABEL)
