"""Magnitude scores streamed from a checkpoint: each tensor read once, its per-position sums kept, then summed
per group exactly as importance.Magnitude sums them in memory.

    s_c = (sum over the group's weight slots (P, d), in member order, of
           sum over positions i of P's dim d with map(i) = c of sum |P[i, ...]|^p)^(1/p)

Per position: powers (in place) in the tensor's float32 (or float64) value, one sum over the other dims, then
float64:
the same operations on the same values as the in-memory criterion, so the scores are bit-equal for float32
and float64 checkpoints; a bf16/fp16 tensor is first cast to float32 (exact), where the in-memory criterion
would square in half precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from ..errors import InputError
from ..groups import Role
from ..importance import Criterion
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
        for key, tensor in self.checkpoint.tensors(dims):
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
