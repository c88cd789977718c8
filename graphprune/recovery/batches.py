"""Batches for recovery and fidelity: what a user's data yields, split into model inputs and labels.

A batch is one of
  * a tensor: the model's only input;
  * a tuple or list: the model's positional inputs first (`positional` of them), then labels
    (the calibration convention: `(x, y)` for a classifier);
  * a mapping (a dict, a tokenizer's BatchEncoding, a Hugging Face dataset's batch): keyword
    inputs, with the labels under "labels".
Data is any re-iterable of batches (a list, a `torch.utils.data.DataLoader`), a one-shot
iterator (read into a list once), or a Hugging Face `datasets.Dataset` (duck-typed: batched
with `batch_size` rows, as torch tensors).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
import torch.fx as fx

from ..errors import InputError, first_line

LABELS_KEY = "labels"


@dataclass(frozen=True)
class Batch:
    """One batch, split: the forward's positional and keyword inputs, and the labels (None without)."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    labels: Any = None
    raw: Any = field(default=None, compare=False, repr=False)  # the batch as the data gave it (for readouts)

    def to(self, device: torch.device) -> "Batch":
        """The batch on `device`; a tensor held twice (in `raw` and in the split) is moved once."""
        moved: dict[int, torch.Tensor] = {}

        def move(v):
            if not isinstance(v, torch.Tensor):
                return v
            if id(v) not in moved:
                moved[id(v)] = v.to(device)
            return moved[id(v)]
        labels = tuple(map(move, self.labels)) if isinstance(self.labels, tuple) else move(self.labels)
        return Batch(tuple(move(a) for a in self.args), {k: move(v) for k, v in self.kwargs.items()}, labels,
                     _moved(self.raw, move))

    def run(self, model: torch.nn.Module, who: str):
        """`model` called on this batch; a failure is an InputError naming `who` and the batch's shapes."""
        try:
            return model(*self.args, **self.kwargs)
        except Exception as exc:
            raise InputError(f"{who} cannot run a batch of inputs {self.shapes()}: {type(exc).__name__}: "
                             f"{first_line(exc)}; give batches the model takes (a tensor, a tuple of its "
                             "inputs then labels, or a dict of keyword inputs)") from exc

    def shapes(self) -> str:
        def shape(v):
            return tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        parts = [str(shape(a)) for a in self.args] + [f"{k}={shape(v)}" for k, v in self.kwargs.items()]
        return "(" + ", ".join(parts) + ")"


def module_device(module: torch.nn.Module) -> torch.device:
    """Where `module`'s first parameter (else buffer) lives; the CPU for a module without tensors."""
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _moved(raw, move):
    if isinstance(raw, Mapping):
        return {k: move(v) for k, v in raw.items()}
    if isinstance(raw, (tuple, list)):
        return type(raw)(move(v) for v in raw)
    return move(raw)


def positional_inputs(model: torch.nn.Module) -> int:
    """How many leading entries of a tuple batch are `model`'s inputs: the forward's required positional
    parameters (an export graph: the positional inputs it was captured with), at least 1."""
    if isinstance(model, fx.GraphModule):
        spec = getattr(model, "_in_spec", None)
        if spec is not None:  # export frontend: (args, kwargs) pytree
            return max(1, spec.child(0).num_children)
        return max(1, sum(1 for n in model.graph.nodes if n.op == "placeholder" and not n.args))
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return max(1, sum(1 for p in params if p.kind in kinds and p.default is inspect.Parameter.empty))


def split(batch, positional: int, where: str = "data") -> Batch:
    """`batch` as a Batch (see the module docstring); InputError on anything else."""
    if isinstance(batch, torch.Tensor):
        return Batch((batch,), raw=batch)
    if isinstance(batch, Mapping):
        kwargs = dict(batch)
        labels = kwargs.pop(LABELS_KEY, None)
        if not kwargs:
            raise InputError(f"a batch of {where} is a mapping with no model inputs (keys: {sorted(batch)}); "
                             "give the forward's keyword inputs, with labels under 'labels'")
        return Batch((), kwargs, labels, batch)
    if isinstance(batch, (tuple, list)) and batch:
        rest = tuple(batch[positional:])
        return Batch(tuple(batch[:positional]), {}, (rest[0] if len(rest) == 1 else rest) if rest else None, batch)
    raise InputError(f"a batch of {where} is a {type(batch).__name__}; give a tensor, a tuple (the model's "
                     "inputs, then labels) or a dict of keyword inputs")


def _is_hf_dataset(data) -> bool:
    return hasattr(data, "with_format") and hasattr(data, "iter") and hasattr(data, "column_names")


class Batches:
    """A re-iterable view of the user's data (see the module docstring); InputError when it is empty."""

    def __init__(self, data, batch_size: int = 8, where: str = "data"):
        if data is None:
            raise InputError(f"no {where} given; pass batches: a list of tensors or (inputs, labels) tuples, "
                             "a DataLoader, or a Hugging Face dataset")
        if isinstance(data, (torch.Tensor, Mapping)):
            data = [data]  # one batch
        elif _is_hf_dataset(data):
            data = _HFDataset(data, batch_size)
        elif not isinstance(data, Iterable):
            raise InputError(f"{where} is a {type(data).__name__}, not an iterable of batches; pass a list of "
                             "batches, a DataLoader or a Hugging Face dataset")
        elif iter(data) is data:  # a generator or iterator: read once
            data = list(data)
        self._data, self.where = data, where
        if next(iter(self._data), None) is None:
            raise InputError(f"{where} is empty: it yields no batch; pass at least one batch")

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        try:
            return len(self._data)
        except TypeError:
            raise InputError(f"{self.where} has no length (an iterable without len()); give steps= instead "
                             "of epochs=") from None


class _HFDataset:
    """A Hugging Face dataset read as torch batches of `batch_size` rows (the last one may be smaller)."""

    def __init__(self, dataset, batch_size: int):
        self.dataset, self.batch_size = dataset.with_format("torch"), batch_size

    def __iter__(self) -> Iterator:
        return iter(self.dataset.iter(batch_size=self.batch_size))

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)
