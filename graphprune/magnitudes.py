"""Per-channel magnitudes of weights: sums of |w|^p over every position but one dim, the numbers Magnitude, BNScale
and Wanda rank channels by (importance.py).

`position_sums` finds them for every (weight, dim) a set of groups reads, each weight powered once for all its dims,
small weights of one shape stacked and reduced as one (the very values each gives alone); `accumulate` adds them up
per group channel through the slots' index maps.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from .groups import ChannelGroup, Role, Slot

__all__ = ["WEIGHT_ROLES", "accumulate", "per_position", "position_sums"]

WEIGHT_ROLES = (Role.PRODUCER, Role.CONSUMER)
_SMALL = 1 << 16  # elements: below this, a weight's reductions cost less than the calls that launch them (CPU)
_SERIAL = 1 << 15  # elements: torch reduces a smaller CPU tensor on one thread (its grain size), in one order


def _powered(tensor: torch.Tensor, p: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """|t|^p, written into `out` (a contiguous tensor of t's shape and dtype) when given."""
    if p == 2:
        return torch.square(tensor, out=out)
    return torch.abs(tensor, out=out) if p == 1 else torch.pow(tensor.abs(), p, out=out)


def per_position(tensor: torch.Tensor, dim: int, p: int, powered: torch.Tensor | None = None) -> np.ndarray:
    """sum over all dims but `dim` of |t|^p (`powered`: |t|^p, where the caller has it).

    Powers first, then one sum: torch.linalg.vector_norm reducing over a tensor's leading dim (a
    Linear weight's input columns) runs 10-35x slower than this on CPU (measured: 3072x768, dim 0).
    """
    powered = _powered(tensor, p) if powered is None else powered
    other = [d for d in range(powered.ndim) if d != dim]
    return (powered.sum(dim=other) if other else powered).double().numpy()


def _trailing_summed(powered: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """`powered` summed over its trailing dims that no slot reads (a conv weight's kernel), as one matrix-vector
    product; the sums over the read dims are then taken on that small matrix. On CPU, torch's reduction of a
    large conv weight over its output and kernel dims (the input channels' sums) is strided and 1.5-4x slower
    (measured: UNet, VGG-16). Small or non-float tensors are returned as they are."""
    keep = max(dims) + 1
    trailing = math.prod(powered.shape[keep:])
    if (trailing == 1 or powered.numel() < _SMALL or not powered.is_contiguous()
            or powered.dtype not in (torch.float32, torch.float64)):
        return powered
    ones = torch.ones(trailing, dtype=powered.dtype, device=powered.device)
    return torch.mv(powered.view(-1, trailing), ones).view(powered.shape[:keep])


def position_sums(groups: Sequence[ChannelGroup], tensors: Mapping[str, torch.Tensor], p: int,
                  roles=WEIGHT_ROLES) -> dict[tuple[str, int], np.ndarray]:
    """per_position of every (tensor, dim) that a slot of `groups` in `roles` reads, each tensor powered once for all
    its dims (a weight is read as producer and as consumer): the same sums, one |t|^p in memory at a time."""
    dims: dict[str, list[int]] = {}
    for g in groups:
        for slot in g.members:
            if slot.role in roles and slot.name in tensors and slot.dim not in dims.setdefault(slot.name, []):
                dims[slot.name].append(slot.dim)
    sums = _vector_powers([name for name in dims if tensors[name].ndim == 1], tensors, p)
    alike: dict[tuple, list[str]] = {}  # small contiguous weights of one shape, dtype and device read at the same dims
    for name in (name for name in dims if tensors[name].ndim > 1):
        t = tensors[name]
        small = t.numel() < _SMALL and t.is_contiguous()
        alike.setdefault((t.shape, t.dtype, t.device, tuple(dims[name])) if small else (name,), []).append(name)
    matrices = []
    for run in (run for names in alike.values() for run in _runs(names, tensors)):
        if len(run) > 1:
            sums.update(_stacked_sums(run, tensors, dims[run[0]], p))
        else:
            matrices.extend(run)
    scratch = _scratch(tensors[name] for name in matrices)
    for name in matrices:
        tensor = tensors[name].detach()
        out = scratch[(tensor.dtype, tensor.device)][:tensor.numel()].view(tensor.shape) if tensor.is_contiguous() else None
        powered = _trailing_summed(_powered(tensor, p, out), dims[name])
        for dim in dims[name]:
            sums[(name, dim)] = per_position(tensor, dim, p, powered)
    return sums


def _runs(names: Sequence[str], tensors: Mapping[str, torch.Tensor]) -> list[Sequence[str]]:
    """`names` (tensors of one shape) in runs to stack (_stacked_sums) of at most _SERIAL elements each: torch reduces
    such a run on one thread, as it does each of its tensors, whatever the number of threads (a larger stack may be
    split between threads, in another order; and past a few runs' size, its strided sums get slower than the calls
    they save)."""
    size = max(1, _SERIAL // max(1, tensors[names[0]].numel()))
    return [names[i:i + size] for i in range(0, len(names), size)]


def _stacked_sums(names: Sequence[str], tensors: Mapping[str, torch.Tensor], dims: Sequence[int],
                  p: int) -> dict[tuple[str, int], np.ndarray]:
    """per_position of small contiguous tensors of one shape, dtype and device at `dims`, stacked and reduced as one
    (a ResNet's dozens of 3x3 kernels of one width: a few ops in all, not a few per tensor). Each row of the
    stacked sum reduces the same contiguous elements in the same order as the tensor's own sum: the same values."""
    powered = _powered(torch.stack([tensors[name].detach() for name in names]), p)
    sums = {}
    for dim in dims:
        rows = powered.sum(dim=[d for d in range(1, powered.ndim) if d != dim + 1]).double().numpy()
        sums.update(((name, dim), row) for name, row in zip(names, rows))
    return sums


def _scratch(tensors: Iterable[torch.Tensor]) -> dict[tuple, torch.Tensor]:
    """One flat buffer per dtype and device, as large as the largest of `tensors`: |t|^p of every contiguous
    weight is written there in turn (the same values as a new tensor each; memory fresh from the OS is
    paged in once, not once per weight)."""
    sizes: dict[tuple, int] = {}
    for t in tensors:
        sizes[(t.dtype, t.device)] = max(sizes.get((t.dtype, t.device), 0), t.numel())
    return {(dtype, device): torch.empty(n, dtype=dtype, device=device) for (dtype, device), n in sizes.items()}


def _vector_powers(names: Sequence[str], tensors: Mapping[str, torch.Tensor], p: int) -> dict[tuple[str, int], np.ndarray]:
    """per_position of 1-D tensors (norm scales, biases: |t|^p itself), the tensors of one dtype and device
    concatenated and powered as one: elementwise, so the very values of one op per tensor, for a few ops in all."""
    by_kind: dict[tuple, list[str]] = {}
    for name in names:
        by_kind.setdefault((tensors[name].dtype, tensors[name].device), []).append(name)
    sums = {}
    for kind_names in by_kind.values():
        joined = _powered(torch.cat([tensors[n].detach() for n in kind_names]), p).double().numpy()
        ends = itertools.accumulate(tensors[n].numel() for n in kind_names)
        sums.update(((name, 0), joined[end - tensors[name].numel():end]) for name, end in zip(kind_names, ends))
    return sums


def accumulate(group: ChannelGroup, tensors: Mapping[str, torch.Tensor], p: int, roles=WEIGHT_ROLES,
               keep: Callable[[Slot], bool] = lambda s: True,
               sums: Mapping[tuple[str, int], np.ndarray] | None = None) -> np.ndarray:
    """Per group channel: the sum of |w|^p over the positions of its weight slots (`sums`: position_sums)."""
    total = np.zeros(group.size)
    for slot, index_map in group.members.items():
        if slot.role in roles and slot.name in tensors and keep(slot):
            weights = (sums[(slot.name, slot.dim)] if sums is not None
                       else per_position(tensors[slot.name].detach(), slot.dim, p))
            total += np.bincount(index_map, weights=weights, minlength=group.size)
    return total
