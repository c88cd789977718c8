"""Channel-matched feature taps: compare a pruned activation with the dense one at the channels it kept.

A pruned model's activation at node n is a channel subset of the dense model's activation at
the same node: for each pruned channel dim d of n, the pruned tensor holds the dense tensor's
positions P_d (`passes.shrink.positions_kept_by_slot`). So

    teacher_view(n) = dense(n).index_select(d, P_d) for every pruned dim d  ==  shape of pruned(n)

and the two can be compared directly, with no learned projection. Both graphs keep the node
names of the analysed graph, which is how a student node finds its teacher node.

Default layers (`default_layers`): the residual joins (an add of two tensors of one shape: the
output of each block, the residual stream of a transformer); in a model without any, the last
activation of each channel group (what enters the next layer). At most `limit`, evenly spaced in
graph order, the last one always kept.
"""
from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.fx as fx
from torch.utils._pytree import tree_unflatten

from ..errors import InputError
from ..frontends import flat_inputs
from ..groups import DependencyGraph, Role
from ..passes.shrink import positions_kept_by_slot
from ..planner import PrunePlan
from ..trace import META_KEY, NodeFailure, TensorMeta, bind_inputs, run_graph

_ADDS = (operator.add, torch.add, torch.ops.aten.add.Tensor)


@dataclass(frozen=True)
class Tap:
    """One matched layer: the node, and the kept positions of each of its pruned dims."""

    node: str
    kept: tuple[tuple[int, torch.Tensor], ...] = ()

    def teacher_view(self, dense_value: torch.Tensor) -> torch.Tensor:
        """The dense activation at the channels the student kept (see the module docstring)."""
        for dim, positions in self.kept:
            dense_value = dense_value.index_select(dim, positions.to(dense_value.device))
        return dense_value


def _float_meta(node: fx.Node) -> TensorMeta | None:
    meta = node.meta.get(META_KEY)
    return meta if isinstance(meta, TensorMeta) and meta.dtype.is_floating_point and meta.ndim >= 2 else None


def _is_residual_join(node: fx.Node) -> bool:
    is_add = (node.op == "call_function" and node.target in _ADDS) or \
             (node.op == "call_method" and node.target in ("add", "add_"))
    if not is_add or _float_meta(node) is None:
        return False
    operands = [a for a in node.args[:2] if isinstance(a, fx.Node)]
    return len(operands) == 2 and all(getattr(_float_meta(a), "shape", None) == _float_meta(node).shape
                                      for a in operands)


def _last_group_activations(gm: fx.GraphModule, graph: DependencyGraph) -> list[str]:
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    last = set()
    for group in graph.groups:
        names = [s.name for s in group.members if s.role is Role.ACTIVATION and s.name in order]
        if names:
            last.add(max(names, key=order.__getitem__))
    return [n.name for n in gm.graph.nodes if n.name in last]


def evenly_spaced(names: list[str], limit: int) -> list[str]:
    """At most `limit` of `names`, evenly spaced, first and last kept."""
    if len(names) <= limit:
        return list(names)
    picks = np.unique(np.round(np.linspace(0, len(names) - 1, limit)).astype(int))
    return [names[i] for i in picks]


def default_layers(dense: fx.GraphModule, student: fx.GraphModule, graph: DependencyGraph, limit: int) -> list[str]:
    """The layers matched by default (see the module docstring), present in both graphs."""
    in_student = {n.name for n in student.graph.nodes if _float_meta(n) is not None}
    joins = [n.name for n in dense.graph.nodes if _is_residual_join(n) and n.name in in_student]
    if not joins:
        joins = [n for n in _last_group_activations(dense, graph) if n in in_student]
    return evenly_spaced(joins, limit)


def make_taps(names: Iterable[str], graph: DependencyGraph, plan: PrunePlan) -> tuple[Tap, ...]:
    """One Tap per node name, with the kept positions of its pruned activation dims."""
    kept: dict[str, list] = {}
    for slot, positions in positions_kept_by_slot(graph, plan).items():
        if slot.role is Role.ACTIVATION:
            kept.setdefault(slot.name, []).append((slot.dim, torch.tensor(positions, dtype=torch.long)))
    return tuple(Tap(name, tuple(sorted(kept.get(name, ()), key=lambda p: p[0]))) for name in names)


def placeholder_values(gm: fx.GraphModule, args: tuple, kwargs: dict) -> tuple:
    """One value per placeholder of `gm` from the forward's (args, kwargs), for either frontend's graph.

    An export graph's forward names every input it was captured with; any of them may come by keyword."""
    spec = getattr(gm, "_in_spec", None)
    if spec is None:
        return bind_inputs(gm, args, kwargs)
    names = gm.graph._codegen.pytree_info.orig_args
    try:
        bound = inspect.signature(gm.forward).bind(*args, **kwargs).arguments
    except TypeError as exc:
        raise InputError(f"the graph takes the inputs ({', '.join(names)}): {exc}") from None
    values = [bound[name] for name in names]
    positional = spec.child(0).num_children
    return flat_inputs(gm, values[:positional], dict(zip(names[positional:], values[positional:])))


def _output(gm: fx.GraphModule, flat) -> object:
    info = getattr(gm.graph._codegen, "pytree_info", None)
    return tree_unflatten(list(flat), info.out_spec) if info is not None and info.out_spec is not None else flat


class TappedGraph(torch.nn.Module):
    """Runs a GraphModule and returns (its output, the values of the tapped nodes, in order)."""

    def __init__(self, graph_module: fx.GraphModule, names: Iterable[str]):
        super().__init__()
        self.graph_module = graph_module
        self.names = tuple(names)

    def forward(self, *args, **kwargs):
        wanted, values = set(self.names), {}

        def keep(node: fx.Node, value) -> None:
            if node.name in wanted:
                values[node.name] = value

        inputs = placeholder_values(self.graph_module, args, kwargs)
        try:
            out = run_graph(self.graph_module, inputs, keep)
        except NodeFailure as failure:
            raise failure.__cause__ from None
        return _output(self.graph_module, out), tuple(values[n] for n in self.names)
