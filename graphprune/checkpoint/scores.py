"""Magnitude, Wanda and activation scores streamed from a checkpoint: each tensor read once, its per-position sums kept, then
summed per group exactly as importance.Magnitude and importance.Wanda sum them in memory.

    s_c = (sum over the group's weight slots (P, d), in member order, of
           sum over positions i of P's dim d with map(i) = c of sum |P[i, ...]|^p)^(1/p)

Per position: powers (in place) in the tensor's float32 (or float64) value, one sum over the other dims, then
float64:
the same operations on the same values as the in-memory criterion, so the scores are bit-equal for float32
and float64 checkpoints; a bf16/fp16 tensor is first cast to float32 (exact), where the in-memory criterion
would square in half precision.

StreamedWanda: s_c = sum over the group's weight slots (P, d) whose layer input is known (importance.layer_reads
on the meta graph, and an input norm recorded for the nn.Linear owning P: layerwise.py) of
sum over positions i of P's dim d with map(i) = c of sum |P[i, ...]| * ||X_j||_2 (j: P's input dim), in
float64 as importance.Wanda computes it; a group with no such slot scores L1 magnitude (Wanda's fallback).
StreamedActivation: importance.ActivationMean (mean |x_j| over tokens of each activation a Linear of the group
reads), from the per-batch input statistics a layer-by-layer run records (layerwise.py); no tensor is read.
A tensor of more than CHUNK elements (an 8B model's embeddings) is weighted CHUNK elements' rows at a time,
its sums added per chunk: the float64 rounding of those sums may differ from one sum in the last bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from ..errors import InputError
from ..groups import Role
from ..importance import Criterion, layer_reads
from .progress import SILENT, Stage, Tracker
from .source import Checkpoint

WEIGHT_ROLES = (Role.PRODUCER, Role.CONSUMER)


def powered(tensor: torch.Tensor, p: int) -> torch.Tensor:
    """|t|^p in float32 at least, in place where `tensor` is already float32/float64 (a buffer the reader made)."""
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor.square_() if p == 2 else tensor.abs_() if p == 1 else tensor.abs_().pow_(p)


def per_position(power: torch.Tensor, dim: int) -> np.ndarray:
    """sum over all dims but `dim` of a powered tensor, as float64 (importance.Magnitude's one sum)."""
    other = [d for d in range(power.ndim) if d != dim]
    return (power.sum(dim=other) if other else power).double().numpy()


@dataclass(frozen=True)
class StreamedMagnitude(Criterion):
    """Magnitude(p) over the checkpoint's tensors; `keys` maps a graph tensor name to its checkpoint key."""

    checkpoint: Checkpoint
    keys: Mapping[str, str]
    p: int = 2
    progress: Tracker = SILENT

    def _key(self, name: str) -> str:
        if name not in self.keys:
            raise InputError(f"tensor {name!r} of the model is not in the checkpoint {self.checkpoint.path!r}; "
                             "its keys must be the model's state_dict names (as save_pretrained writes them)")
        return self.keys[name]

    def __call__(self, groups, ctx):
        dims: dict[str, set[int]] = {}
        for g in groups:
            for slot in g.members:
                if slot.role in WEIGHT_ROLES:
                    dims.setdefault(self._key(slot.name), set()).add(slot.dim)
        sums = {}
        scoring = self.progress.stage(Stage.SCORING, *self.checkpoint.extent(dims))
        for key, tensor in self.checkpoint.tensors(dims, scoring.advance):
            power = powered(tensor, self.p)
            del tensor  # a bf16 tensor's buffer goes before the sums: peak = its float32 copy + a sum
            for dim in dims[key]:
                sums[(key, dim)] = per_position(power, dim)
            del power
        out = {}
        for g in groups:
            total = np.zeros(g.size)
            for slot, index_map in g.members.items():
                if slot.role in WEIGHT_ROLES:
                    total += np.bincount(index_map, weights=sums[(self._key(slot.name), slot.dim)], minlength=g.size)
            out[g.id] = total ** (1.0 / self.p)
        return out


CHUNK = 2**26  # elements weighted at a time: 512 MB of float64


def weighted_per_position(tensor: torch.Tensor, dim: int, norms: torch.Tensor, weight_dim: int) -> np.ndarray:
    """sum over all dims but `dim` of |tensor| * norms (along weight_dim), in float64 (importance.Wanda's sums)."""
    shape = [1] * tensor.ndim
    shape[weight_dim] = -1
    norms = norms.view(shape)
    rows = max(1, CHUNK // max(1, tensor[0].numel())) if tensor.ndim > 1 else len(tensor)
    if rows >= len(tensor):
        return per_position(tensor.abs().double().mul_(norms), dim)
    parts = [per_position(chunk.abs().double().mul_(norms), dim) for chunk in tensor.split(rows)]
    return np.concatenate(parts) if dim == 0 else np.sum(parts, axis=0)


@dataclass(frozen=True)
class StreamedWanda(Criterion):
    """Wanda over the checkpoint's tensors (module docstring); `norms`: model weight name -> ||X_j||_2 of the
    input of the nn.Linear owning it (tied names resolved through `aliases`: name -> first name)."""

    checkpoint: Checkpoint
    keys: Mapping[str, str]
    norms: Mapping[str, torch.Tensor]
    aliases: Mapping[str, str]
    progress: Tracker = SILENT

    def _norm(self, name: str) -> torch.Tensor | None:
        first = self.aliases.get(name, name)
        return next((t for n, t in self.norms.items() if self.aliases.get(n, n) == first), None)

    def __call__(self, groups, ctx):
        reads = layer_reads(ctx.model, ctx.graph, ctx.layer_inputs)
        magnitude = StreamedMagnitude(self.checkpoint, self.keys, 1, self.progress)
        known, fallback = {}, []
        for g in groups:
            slots = [(s, reads[s.name]) for s in g.members if s.role in WEIGHT_ROLES and s.name in reads]
            slots = [(s, r, self._norm(s.name)) for s, r in slots]
            slots = [(s, r, n) for s, r, n in slots if n is not None]
            known[g.id] = slots
            if not slots:
                fallback.append(g)
        wanted = {}
        for slots in known.values():
            for slot, read, norms in slots:
                wanted.setdefault(magnitude._key(slot.name), {})[(slot.dim, read.weight_dim)] = norms
        sums = {}
        scoring = self.progress.stage(Stage.SCORING, *self.checkpoint.extent(wanted))
        for key, tensor in self.checkpoint.tensors(wanted, scoring.advance):
            for (dim, weight_dim), norms in wanted[key].items():
                sums[(key, dim, weight_dim)] = weighted_per_position(tensor, dim, norms, weight_dim)
            del tensor
        out = magnitude(fallback, ctx) if fallback else {}
        for g in groups:
            if known[g.id]:
                total = np.zeros(g.size)
                for slot, read, _ in known[g.id]:
                    weights = sums[(magnitude._key(slot.name), slot.dim, read.weight_dim)]
                    total += np.bincount(g.members[slot], weights=weights, minlength=g.size)
                out[g.id] = total
        return out


@dataclass(frozen=True)
class StreamedActivation(Criterion):
    """importance.ActivationMean from a layer-by-layer run: `calls` maps a Linear weight name to the per-batch
    means over tokens of |x_j| of its input (layerwise.mean_magnitudes; tied names resolved through `aliases`).
    s_c = sum over batches, then over the group's activations read by a Linear (in member order), of the mean
    of those means over the positions mapped to c, divided by (activations x batches): ActivationMean's sums in
    its order, so the scores are bit-equal where every activation the group's layers read is a Linear's input.
    A group no Linear reads scores L2 magnitude (ActivationMean's fallback)."""

    checkpoint: Checkpoint
    keys: Mapping[str, str]
    calls: Mapping[str, list]
    aliases: Mapping[str, str]
    progress: Tracker = SILENT

    def _calls(self, name: str) -> list | None:
        first = self.aliases.get(name, name)
        return next((c for n, c in self.calls.items() if self.aliases.get(n, n) == first), None)

    def __call__(self, groups, ctx):
        by_input: dict[str, list] = {}  # activation node name -> per-batch statistics of the Linear reading it
        for weight, read in layer_reads(ctx.model, ctx.graph, ctx.layer_inputs).items():
            calls = self._calls(weight)
            if calls is not None:
                by_input.setdefault(read.reads.name, calls)
        slots = {g.id: [s for s in g.members if not s.is_param and s.name in by_input] for g in groups}
        fallback = [g for g in groups if not slots[g.id]]
        out = StreamedMagnitude(self.checkpoint, self.keys, 2, self.progress)(fallback, ctx) if fallback else {}
        batches = max((len(c) for c in by_input.values()), default=0)
        sums = {g.id: np.zeros(g.size) for g in groups if slots[g.id]}
        for b in range(batches):
            for g in groups:
                for slot in slots[g.id]:
                    counts = np.bincount(g.members[slot], minlength=g.size)
                    sums[g.id] += np.bincount(g.members[slot], weights=by_input[slot.name][b].numpy(),
                                              minlength=g.size) / np.maximum(counts, 1)
        for gid, total in sums.items():
            out[gid] = total / (len(slots[gid]) * batches)
        return out
