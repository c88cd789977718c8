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
from .groups import Coupling, DependencyGraph, Freeze, Role, build_groups
from .rules import AnalysisContext, RuleTable
from .rules.base import describe_node
from .rules.movement import MovementRule

_CALLS = ("call_module", "call_function", "call_method")


def attention_inputs(gm: fx.GraphModule, rules: RuleTable, modules) -> frozenset[str]:
    """Data-movement nodes on the way into an op whose rule `reads_heads` (matmul, attention).

    A reshape among them that splits channels into (heads, head_dim) keeps the heads as its
    channel dim, so attention is pruned by whole heads.
    """
    def rule(n):
        return rules.for_node(n, modules) if n.op in _CALLS else None

    stack = [a for n in gm.graph.nodes if getattr(rule(n), "reads_heads", False) for a in n.all_input_nodes]
    marked = set()
    while stack:
        n = stack.pop()
        if n.name not in marked and isinstance(rule(n), MovementRule):
            marked.add(n.name)
            stack.extend(n.all_input_nodes)
    return frozenset(marked)


def _declare_constant(node: fx.Node, ctx: AnalysisContext) -> list[Coupling]:
    """A parameter/buffer read with get_attr that is a vector (one dim > 1) carries channels on that dim."""
    tensor = ctx.constant(node)
    if tensor is None:
        return []
    dims = [d for d in range(tensor.ndim) if tensor.shape[d] > 1]
    if len(dims) != 1:
        return []
    ctx.declared[node.name] = dims[0]
    role = Role.PRODUCER if node.target in ctx.params else Role.BUFFER
    return [Coupling(ctx.output_slot(node, dims[0]), ctx.param_slot(node.target, dims[0], role))]


def analyse(gm: fx.GraphModule, rules: RuleTable, *, strict: bool = False) -> DependencyGraph:
    """Channel groups of `gm` (whose nodes carry values from `trace.record_values`). Does not modify `gm`."""
    ctx = AnalysisContext(gm)
    ctx.head_splits = attention_inputs(gm, rules, ctx.modules)
    couplings, freezes, unsupported = [], [], []

    def freeze_tensor_inputs(node: fx.Node, reason: str) -> None:
        for a in node.all_input_nodes:
            d = ctx.channel_dim(a)
            if ctx.is_tensor(a) and isinstance(d, int):
                freezes.append(Freeze(ctx.input_slot(a, d), reason))

    for node in gm.graph.nodes:
        if node.op == "get_attr":
            couplings.extend(_declare_constant(node, ctx))
            continue
        if node.op == "placeholder":
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
