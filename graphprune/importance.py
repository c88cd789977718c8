"""Importance criteria: one score per channel of a group, higher means more important.

A criterion sees every parameter of the group — the producing filters, their biases and
norm parameters, and the consumers' input kernels — so coupled layers are ranked together.
For magnitude with exponent p, channel c of group G scores
    s_c = ( sum over member params P, over positions i of P's slot with map(i) = c, of sum |P[i, ...]|^p )^(1/p)
Running statistics (buffers) are not weights and do not score.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Union

import numpy as np
import torch

from .errors import InputError
from .groups import ChannelGroup, Role

_WEIGHT_ROLES = (Role.PRODUCER, Role.CONSUMER)


@dataclass(frozen=True)
class Magnitude:
    """Lp norm of every weight that writes or reads the channel (p=1: L1, p=2: L2)."""

    p: int = 2

    def __call__(self, group: ChannelGroup, model: torch.nn.Module) -> np.ndarray:
        params = dict(model.named_parameters(remove_duplicate=False))
        total = np.zeros(group.size)
        for slot, index_map in group.members.items():
            if slot.role not in _WEIGHT_ROLES:
                continue
            w = params[slot.name].detach()
            other = [d for d in range(w.ndim) if d != slot.dim]
            per_position = torch.linalg.vector_norm(w, self.p, dim=other).double() ** self.p if other else w.abs().double() ** self.p
            total += np.bincount(index_map, weights=per_position.numpy(), minlength=group.size)
        return total ** (1.0 / self.p)


Criterion = Callable[[ChannelGroup, torch.nn.Module], np.ndarray]

BUILTIN = MappingProxyType({"l1": Magnitude(1), "l2": Magnitude(2)})


def resolve(importance: Union[str, Criterion]) -> Criterion:
    """A criterion object from a built-in name ("l1", "l2") or a user callable(group, model) -> scores."""
    if isinstance(importance, str):
        if importance not in BUILTIN:
            raise InputError(f"unknown importance {importance!r}; use one of {sorted(BUILTIN)} or pass a callable(group, model)")
        return BUILTIN[importance]
    if callable(importance):
        return importance
    raise InputError(f"importance must be a name or a callable, got {type(importance).__name__}")


def score_groups(groups, model: torch.nn.Module, criterion: Criterion) -> dict[str, np.ndarray]:
    """Scores for every group, checked for shape and finiteness."""
    scores = {}
    for g in groups:
        s = np.asarray(criterion(g, model), dtype=np.float64)
        if s.shape != (g.size,) or not np.isfinite(s).all():
            raise InputError(f"importance for group {g.id} must be {g.size} finite scores, got shape {s.shape}")
        scores[g.id] = s
    return scores
