"""Build the DependencyGraph of a traced model: a pure function of the graph and a rule table.

Walks the FX graph in order. Each node's rule reports its output's channel dim and the
couplings it creates; nodes without a rule freeze the channels they touch. Channels that
come from a model input or reach a model output are frozen, so the pruned model is a
drop-in replacement.
"""
from __future__ import annotations

import torch.fx as fx
from torch.utils._pytree import tree_leaves

from .errors import UnsupportedOpError
from .groups import DependencyGraph, Freeze, build_groups
from .rules import AnalysisContext, RuleTable
from .rules.base import describe_node


def analyse(gm: fx.GraphModule, rules: RuleTable, *, strict: bool = False) -> DependencyGraph:
    """Channel groups of `gm` (whose nodes carry values from `trace.record_values`). Does not modify `gm`."""
    ctx = AnalysisContext(gm)
    couplings, freezes, unsupported = [], [], []

    def freeze_tensor_inputs(node: fx.Node, reason: str) -> None:
        for a in node.all_input_nodes:
            d = ctx.channel_dim(a)
            if ctx.is_tensor(a) and isinstance(d, int):
                freezes.append(Freeze(ctx.input_slot(a, d), reason))

    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            continue
        if node.op == "output":
            for a in tree_leaves(node.args):
                d = ctx.channel_dim(a) if isinstance(a, fx.Node) else None
                if ctx.is_tensor(a) and isinstance(d, int):
                    freezes.append(Freeze(ctx.input_slot(a, d), f"reaches model output through `{a.name}`"))
            continue
        rule = rules.for_node(node, ctx.modules)
        problem = None
        if rule is None:
            problem = f"{describe_node(node, ctx.modules)} has no rule"
        else:
            try:
                effect = rule.couple(node, ctx)
            except Exception as exc:  # a rule that cannot handle this call site freezes instead of guessing
                problem = f"{describe_node(node, ctx.modules)}: rule {type(rule).__name__} failed ({type(exc).__name__}: {exc})"
            else:
                ctx.declared[node.name] = effect.out_dim
                couplings.extend(effect.couplings)
                freezes.extend(effect.freezes)
        if problem is not None:
            touches_tensors = ctx.is_tensor(node) or any(ctx.is_tensor(a) for a in node.all_input_nodes)
            if touches_tensors:
                unsupported.append(problem)
                freeze_tensor_inputs(node, problem)
                ctx.producer_note[node.name] = f"produced by {problem}"
    if strict and unsupported:
        raise UnsupportedOpError(
            "strict=True and the graph has ops graphprune cannot follow: " + "; ".join(unsupported)
            + ". Fix: add a rule with default_rules().with_rule(...), or call with strict=False to freeze their channels."
        )
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    return build_groups(ctx.sizes, couplings, freezes + ctx.freezes, order, ctx.declared)
