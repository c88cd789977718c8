"""Fidelity: how closely a pruned model reproduces its dense model, measured on data.

On each batch both models run (eval mode, no gradients); their *compared outputs* (the
primary output, see `primary_output`, or what `readout(output, batch)` returns) are read as
rows over the last dim (a classifier: one row per sample; an LM: one per token). Then

    top1_agreement = mean over rows of [argmax s == argmax t]
    top5_overlap   = mean over rows of |top5(s) & top5(t)| / 5      (k = min(5, last dim))
    kl             = mean over rows of KL(softmax t || softmax s)
    cosine         = mean over rows of cos(s, t)
    accuracy       = mean of [argmax s == label] over labelled rows (labels -100 ignored), with labels

which of these is meaningful depends on the output: agreement and KL for logits, cosine for
embeddings and hidden states.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import InputError
from .batches import Batch, Batches, module_device, positional_inputs, split

IGNORE_LABEL = -100


def primary_output(output: Any) -> torch.Tensor:
    """The tensor a model's output is judged by: the tensor itself; a mapping's "logits" (else
    "last_hidden_state", else its first tensor); a tuple's first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        for key in ("logits", "last_hidden_state"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        values = list(output.values())
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        values = []
    for value in values:
        try:
            return primary_output(value)
        except InputError:
            continue
    raise InputError(f"the model returns a {type(output).__name__} holding no tensor; compare a tensor output, "
                     "or pass readout=callable(output, batch) -> tensor")


def compared(output: Any, batch: Batch, readout: Callable | None) -> torch.Tensor:
    """The tensor fidelity and the output loss compare: `readout(output, raw batch)` or the primary output."""
    value = readout(output, batch.raw) if readout is not None else primary_output(output)
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise InputError(f"the compared output is a {type(value).__name__}"
                         + (f" of {value.dtype}" if isinstance(value, torch.Tensor) else "")
                         + "; readout must return a floating-point tensor")
    return value


def rows(t: torch.Tensor) -> torch.Tensor:
    """`t` as rows over its last dim, in float32."""
    return t.float().reshape(-1, t.shape[-1] if t.ndim else 1)


@dataclass(frozen=True)
class Fidelity:
    """Agreement of a pruned model with its dense model on some data (see the module docstring)."""

    rows: int
    top1_agreement: float
    top5_overlap: float
    kl: float
    cosine: float
    accuracy: float | None = None  # the pruned model's, with labels
    dense_accuracy: float | None = None

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        acc = "" if self.accuracy is None else f", accuracy {self.accuracy:.4f} (dense {self.dense_accuracy:.4f})"
        return (f"top-1 agreement {self.top1_agreement:.4f}, top-5 overlap {self.top5_overlap:.4f}, "
                f"KL {self.kl:.4g}, cosine {self.cosine:.4f}{acc} over {self.rows} rows")


class _Sums:
    def __init__(self):
        self.rows = self.top1 = self.top5 = self.kl = self.cos = 0.0
        self.labelled = self.correct = self.dense_correct = 0

    def add(self, t: torch.Tensor, s: torch.Tensor, labels) -> None:
        if t.shape != s.shape:
            raise InputError(f"the dense model's compared output has shape {tuple(t.shape)} and the pruned "
                             f"model's {tuple(s.shape)}: they must be the same outputs of the same inputs")
        t, s = rows(t), rows(s)
        k = min(5, t.shape[1])
        self.rows += t.shape[0]
        self.top1 += float((t.argmax(1) == s.argmax(1)).sum())
        top_t, top_s = t.topk(k, 1).indices, s.topk(k, 1).indices
        self.top5 += float((top_t.unsqueeze(2) == top_s.unsqueeze(1)).any(2).sum()) / k
        self.kl += float(F.kl_div(s.log_softmax(1), t.log_softmax(1), log_target=True, reduction="sum"))
        self.cos += float(F.cosine_similarity(t, s, dim=1).sum())
        if isinstance(labels, torch.Tensor) and not labels.is_floating_point() and labels.numel() == t.shape[0]:
            y = labels.reshape(-1)
            seen = y != IGNORE_LABEL
            self.labelled += int(seen.sum())
            self.correct += int(((s.argmax(1) == y) & seen).sum())
            self.dense_correct += int(((t.argmax(1) == y) & seen).sum())

    def result(self) -> Fidelity:
        n = max(self.rows, 1)
        acc = (self.correct / self.labelled, self.dense_correct / self.labelled) if self.labelled else (None, None)
        return Fidelity(int(self.rows), self.top1 / n, self.top5 / n, self.kl / n, self.cos / n, *acc)


@torch.no_grad()
def fidelity(dense: torch.nn.Module, pruned: torch.nn.Module, data, *, readout: Callable | None = None,
             max_batches: int | None = None, batch_size: int = 8) -> Fidelity:
    """Measure how closely `pruned` reproduces `dense` on `data` (batches as in graphprune.recovery.batches).

    Both models run in eval mode and are left in the mode they had. `readout(output, batch)` picks the
    compared tensor (e.g. a pooled embedding); `max_batches` stops early. Labels in the batches give
    the accuracy of both models.
    """
    batches = Batches(data, batch_size, "fidelity data")
    positional = positional_inputs(dense)
    modes = dense.training, pruned.training
    dense.eval(), pruned.eval()
    sums = _Sums()
    try:
        for k, raw in enumerate(batches):
            if max_batches is not None and k >= max_batches:
                break
            batch = split(raw, positional, "fidelity data")
            on_dense, on_pruned = batch.to(module_device(dense)), batch.to(module_device(pruned))
            t = compared(on_dense.run(dense, "the dense model"), on_dense, readout)
            s = compared(on_pruned.run(pruned, "the pruned model"), on_pruned, readout)
            sums.add(t.to(s.device), s, on_pruned.labels)
    finally:
        dense.train(modes[0]), pruned.train(modes[1])
    return sums.result()
