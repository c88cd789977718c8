"""Exactness check: physical removal must equal hiding the removed channels from their consumers.

For a plan, copy the original model and zero, in every consumer-side weight slot of a
pruned group (conv/linear input columns), the positions whose channel is dropped. Every
path from a dropped channel to the output then passes through a zero, so the copy
computes what the pruned model should compute. Holds with biases, BN and sigmoid; not
where an op normalises over the pruned dim (LayerNorm over channels, softmax).
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from .groups import DependencyGraph, Role
from .planner import PrunePlan


def zero_dropped_inputs(model: torch.nn.Module, graph: DependencyGraph, plan: PrunePlan) -> torch.nn.Module:
    """A copy of `model` whose consumer weights ignore every channel `plan` drops."""
    zeroed = copy.deepcopy(model)
    params = dict(zeroed.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for gid, kept in plan.keep.items():
            group = graph.group(gid)
            for slot, index_map in group.members.items():
                if slot.role is Role.CONSUMER:
                    dropped = np.flatnonzero(~np.isin(index_map, kept))
                    params[slot.name].index_fill_(slot.dim, torch.as_tensor(dropped, dtype=torch.long), 0.0)
    return zeroed


def _flat(out) -> list[torch.Tensor]:
    """Every tensor of an output: nested tuples, lists and dicts (a Hugging Face ModelOutput is a dict)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = tuple(out.values())
    return [t for o in out for t in _flat(o)] if isinstance(out, (tuple, list)) else []


@torch.no_grad()
def max_exactness_error(model: torch.nn.Module, example_inputs, result, *, rtol: float = 1e-4) -> float:
    """Largest |zeroed(x) - pruned(x)| - rtol*|zeroed(x)| over all outputs, in eval mode; <= atol (1e-5) means exact.

    Both models run in float64, so that float32 summation order (a pruned conv adds fewer
    terms, in another order) can neither hide nor fake a difference.
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    inputs = tuple(t.double() if t.is_floating_point() else t for t in inputs)
    reference = zero_dropped_inputs(model, result.graph, result.plan).eval().double()
    pruned = copy.deepcopy(result.model).eval().double()
    worst = -np.inf
    want, got = _flat(reference(*inputs)), _flat(pruned(*inputs))
    if not want:
        raise AssertionError(f"{type(model).__name__} returned no tensor to compare")
    for a, b in zip(want, got, strict=True):
        if a.shape != b.shape:
            raise AssertionError(f"output shape changed: {tuple(a.shape)} -> {tuple(b.shape)}")
        worst = max(worst, float(((a - b).abs() - rtol * a.abs()).max()))
    return worst
