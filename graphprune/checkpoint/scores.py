"""Magnitude scores streamed from a checkpoint: each tensor read once, its per-position sums kept, then summed
per group exactly as importance.Magnitude sums them in memory.

    s_c = (sum over the group's weight slots (P, d), in member order, of
           sum over positions i of P's dim d with map(i) = c of sum |P[i, ...]|^p)^(1/p)

Per position: powers in the tensor's float32 (or float64) value, one sum over the other dims, then float64:
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


def per_position(tensor: torch.Tensor, dim: int, p: int) -> np.ndarray:
    """sum over all dims but `dim` of |t|^p, computed in float32 at least, returned as float64."""
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    powered = tensor.square() if p == 2 else tensor.abs() if p == 1 else tensor.abs() ** p
    other = [d for d in range(tensor.ndim) if d != dim]
    return (powered.sum(dim=other) if other else powered).double().numpy()


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
            for dim in dims[key]:
                sums[(key, dim)] = per_position(tensor, dim, self.p)
        out = {}
        for g in groups:
            total = np.zeros(g.size)
            for slot, index_map in g.members.items():
                if slot.role in WEIGHT_ROLES:
                    total += np.bincount(index_map, weights=sums[(self._key(slot.name), slot.dim)], minlength=g.size)
            out[g.id] = total ** (1.0 / self.p)
        return out
