"""ShrinkChannels: remove the channels a PrunePlan drops, physically.

1. Every parameter/buffer slot of a pruned group is sliced to its kept positions
   (index_select along the slot's dim; `requires_grad` is preserved).
2. Every node's rule updates what depends on channel counts: module attributes
   (`out_channels`, `groups`, `num_features`, ...) and shape constants baked into the
   graph (`view(1, 64, ...)`, split sizes, slices).
Post-condition: after re-running the model, every pruned activation slot has exactly
its kept number of positions.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.fx as fx

from ..errors import RewriteError
from ..groups import DependencyGraph, Slot
from ..planner import PrunePlan
from ..rules import GraphView, RuleTable, ShrinkContext
from ..rules.base import describe_node, tensor_names
from ..trace import value_meta
from .base import GraphPass, PassResult


def positions_kept_by_slot(graph: DependencyGraph, plan: PrunePlan) -> dict[Slot, np.ndarray]:
    """For every slot of a pruned group whose size changes: the sorted positions it keeps."""
    kept = {}
    for gid, channels in plan.keep.items():
        group = graph.group(gid)
        for slot, positions in group.kept_positions_by_slot(channels).items():
            if len(positions) < len(group.members[slot]):
                kept[slot] = positions
    return kept


def _set_tensor(modules: Mapping[str, torch.nn.Module], names: list[str], value: torch.Tensor) -> torch.Tensor:
    """Bind `value` (as one new Parameter, or one buffer) under every name of a tensor, so tied stays tied; returns
    what was bound.

    `modules`: the GraphModule's named_modules() ("" is the root)."""
    def owner_and_attr(qualname):
        owner_name, _, attr = qualname.rpartition(".")
        return modules[owner_name], attr

    owner, attr = owner_and_attr(names[0])
    old = getattr(owner, attr)
    new = torch.nn.Parameter(value, requires_grad=old.requires_grad) if isinstance(old, torch.nn.Parameter) else value
    for name in names:
        owner, attr = owner_and_attr(name)
        # the name is registered already: rebinding it in its table is what Module.__setattr__ ends with
        table = owner._parameters if isinstance(new, torch.nn.Parameter) else owner._buffers
        table[attr] = new
    return new


def _slot_order(item: tuple[Slot, np.ndarray]) -> tuple:
    """Slot order (name, dim, role) as a key: one call per slot, not one comparison call per pair."""
    slot = item[0]
    return slot.name, slot.dim, slot.role.value


class ShrinkChannels(GraphPass):
    def __init__(self, graph: DependencyGraph, plan: PrunePlan, rules: RuleTable, example_inputs):
        super().__init__(example_inputs)
        self.graph, self.rules = graph, rules
        self.kept = positions_kept_by_slot(graph, plan)

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        gm = graph_module
        view = GraphView(gm)  # its tables, kept up to date below as slicing rebinds tensors (never modules)
        tensors = {**view.params, **view.buffers}
        aliases: dict[str, list[str]] = {}
        for name, first in tensor_names(gm, view).items():
            aliases.setdefault(first, []).append(name)
        current, sliced, indices = {}, set(), {}
        for slot, positions in sorted(((s, p) for s, p in self.kept.items() if s.is_param), key=_slot_order):
            if (slot.name, slot.dim) in sliced:
                continue  # a tied dim read in two roles is one set of channels: sliced once
            sliced.add((slot.name, slot.dim))
            if id(positions) not in indices:  # slots share positions arrays (positions_kept_by_slot)
                indices[id(positions)] = torch.tensor(positions, dtype=torch.long)
            t = current.get(slot.name, tensors[slot.name]).detach()
            current[slot.name] = t.index_select(slot.dim, indices[id(positions)]).contiguous()
        modules = view.modules
        for qualname, value in current.items():
            names = aliases.get(qualname, [qualname])
            bound = _set_tensor(modules, names, value)  # every alias of a tied tensor: the same one
            table = view.params if isinstance(bound, torch.nn.Parameter) else view.buffers
            table.update(dict.fromkeys(names, bound))  # the view's tables as a new walk of the sliced tree reads them
        ctx = ShrinkContext(gm, self.kept, self.graph.channel_dims, view)
        for node in list(gm.graph.nodes):
            rule = self.rules.for_node(node, modules)
            if rule is not None:
                self._shrink(rule, node, ctx, modules)
        return PassResult(gm, bool(self.kept))

    def _shrink(self, rule, node: fx.Node, ctx: ShrinkContext, modules) -> None:
        """`rule.shrink`; a rule that raises is a broken rewrite of `node` (a RewriteError naming rule and node)."""
        try:
            rule.shrink(node, ctx)
        except Exception as exc:
            raise RewriteError(f"pass {self.name}: rule {type(rule).__name__} failed on {describe_node(node, modules)}: "
                               f"{type(exc).__name__}: {exc}", node=node.name) from exc

    def check(self, graph_module: fx.GraphModule) -> None:
        nodes = {n.name: n for n in graph_module.graph.nodes}
        for slot, positions in self.kept.items():
            if slot.is_param or slot.name not in nodes:
                continue
            size = value_meta(nodes[slot.name]).shape[slot.dim]
            if size != len(positions):
                raise RewriteError(f"pass {self.name}: `{slot.name}` dim {slot.dim} has {size} channels after the "
                                   f"rewrite, the plan keeps {len(positions)}. This is a graphprune bug.", node=slot.name)


class EliminateDeadCode(GraphPass):
    """Remove nodes whose results no output reads, and submodules no node calls any more."""

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        graph = graph_module.graph
        # fx's elimination lints the graph first (the pass before this one just did) and then removes nodes without
        # users: it is asked only when such a node exists or a child graph (torch.export's control flow) may hold one
        candidates = any(not n.users and n.op not in ("placeholder", "output") for n in graph.nodes) or any(
            isinstance(m, fx.GraphModule) for m in graph_module.children())
        # a node with users is never removed: ask Node.is_impure (a submodule lookup per call_module) only of the others
        changed = candidates and graph.eliminate_dead_code(lambda node: bool(node.users) or node.is_impure())
        unused = _unused_submodules(graph_module)
        for name in unused:
            graph_module.delete_submodule(name)
        return PassResult(graph_module, changed or bool(unused))


def _unused_submodules(gm: fx.GraphModule) -> list[str]:
    """Outermost submodules that no node calls or reads an attribute of (what fx's
    delete_all_unused_submodules removes, found with sets instead of a list scan per module)."""
    used: set[str] = set()
    called: set[str] = set()  # a called module uses everything inside it
    for node in gm.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            parts = node.target.split(".")
            used.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))  # the target and its parents
            if node.op == "call_module":
                called.add(node.target)
    unused: dict[str, None] = {}  # in order
    for name, _ in gm.named_modules():  # parents come before their children
        if name and name not in used:
            parents = [name[:i] for i, char in enumerate(name) if char == "."]
            if not any(p in called or p in unused for p in parents):
                unused[name] = None
    return list(unused)
