"""The cost model: parameters and MACs as functions of the channels a plan keeps.

MACs come from the rules' `cost` halves: every node contributes terms `MacTerm(macs,
factors)`, and once a plan keeps k_s of the n_s positions of each factor slot s the term
costs macs * prod(k_s) / prod(n_s) (integer division per term). Parameters removed by a
plan are found by slicing the parameters' shapes group by group, so a weight cut along
two dims is counted once. Evaluated on the unpruned model with no plan, both give the
measured totals; a test checks that prediction equals measurement after the rewrite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch.fx as fx

from .groups import ChannelGroup, DependencyGraph, Slot
from .planner import PrunePlan
from .rules import GraphView, MacTerm, RuleTable
from .trace import TensorMeta



@dataclass(frozen=True)
class Counts:
    params: int
    macs: int


def mac_terms(gm: fx.GraphModule, rules: RuleTable, channel_dims: Mapping[str, object] | None = None,
              tables: GraphView | None = None) -> tuple[MacTerm, ...]:
    """Every node's MAC terms, from its rule (nodes without a rule cost nothing). `tables`: GraphView's."""
    view = GraphView(gm, channel_dims, tables)
    terms = []
    for node in gm.graph.nodes:
        if not isinstance(node.meta.get("gp_value"), (TensorMeta, tuple)):
            continue
        rule = rules.for_node(node, view.modules)
        if rule is not None:
            terms.extend(rule.cost(node, view))
    return tuple(terms)


def count_macs(gm: fx.GraphModule, rules: RuleTable, tables: GraphView | None = None) -> int:
    """Measured MACs of a GraphModule whose nodes carry recorded values (`tables`: a GraphView of it, see GraphView)."""
    return sum(t.macs for t in mac_terms(gm, rules, tables=tables))


def kept_share(graph: DependencyGraph, plan: PrunePlan, slot: Slot) -> tuple[int, int] | None:
    """(positions kept, positions) of `slot` once `plan` is applied; None for a slot in no group."""
    g = graph.group_of(slot)
    if g is None:
        return None
    size = g.members[slot].size
    kept = plan.keep.get(g.id)
    return (size if kept is None else len(g.kept_positions(slot, kept))), size


@dataclass(frozen=True)
class CostModel:
    """What planning needs to predict counts: the MAC terms and the parameter shapes of the unpruned model."""

    terms: tuple[MacTerm, ...]
    param_shapes: Mapping[str, tuple[int, ...]]

    @classmethod
    def of(cls, gm: fx.GraphModule, rules: RuleTable, graph: DependencyGraph,
           tables: GraphView | None = None) -> "CostModel":
        """The cost model of `gm`; `tables`: a GraphView of `gm` whose tables are read (GraphView's `tables`)."""
        view = GraphView(gm, graph.channel_dims, tables)
        shapes = {name: tuple(p.shape) for name, p in view.params.items()}
        return cls(mac_terms(gm, rules, graph.channel_dims, view), shapes)

    @property
    def macs(self) -> int:
        return sum(t.macs for t in self.terms)

    def params_removed_by_group(self, graph: DependencyGraph, plan: PrunePlan) -> dict[str, int]:
        """Parameters each pruned group removes (a weight cut on two dims counts once, in the first group)."""
        shapes = {name: list(shape) for name, shape in self.param_shapes.items()}
        removed = {}
        for g in graph.groups:
            kept = plan.keep.get(g.id)
            if kept is None:
                continue
            total, positions = 0, g.kept_positions_by_slot(kept)
            for slot in g.members:
                if not slot.is_param or slot.name not in shapes:
                    continue  # activations and buffers hold no parameters
                n = math.prod(shapes[slot.name])
                shapes[slot.name][slot.dim] = len(positions[slot])
                total += n - math.prod(shapes[slot.name])
            removed[g.id] = total
        return removed

    def predict_macs(self, graph: DependencyGraph, plan: PrunePlan) -> int:
        macs = 0
        for term in self.terms:
            num, den = term.macs, 1
            for slot in term.factors:
                k, n = kept_share(graph, plan, slot) or (1, 1)
                num, den = num * k, den * n
            macs += num // den
        return macs

    def predict(self, graph: DependencyGraph, plan: PrunePlan, params_before: int) -> Counts:
        """(params, MACs) once `plan` is applied, from shapes alone (no rewrite, no run)."""
        removed = sum(self.params_removed_by_group(graph, plan).values())
        return Counts(params_before - removed, self.predict_macs(graph, plan))

    def channel_macs(self, group: ChannelGroup) -> np.ndarray:
        """MACs that removing each channel of `group` alone would save (first order: other groups unpruned)."""
        cost = np.zeros(group.size)
        for term in self.terms:
            for slot in term.factors:
                index_map = group.members.get(slot)
                if index_map is not None:
                    cost += term.macs * np.bincount(index_map, minlength=group.size) / index_map.size
        return cost
