"""Build the DependencyGraph of a traced model: a pure function of the graph and a rule table.

Walks the FX graph in order. Each node's rule reports its output's channel dim and the
couplings it creates; nodes without a rule, and rules that say `Unsupported` for a call
site, freeze the channels they touch. Channels that come from a model input or reach a
model output are frozen, so the pruned model is a drop-in replacement.

A rule that *fails* (raises anything else) is a bug in the rule: with `strict=False` its
channels freeze with the error as the reason, so a user still gets a correct model; with
`strict=True`, or when the environment sets GRAPHPRUNE_RULE_ERRORS=raise (the test suite
does), the error propagates as a RuleError that names the node.
"""
from __future__ import annotations

import operator
import os
from dataclasses import replace

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from .codesizes import attach_equal_counts
from .errors import RuleError, UnsupportedOpError
from .groups import Coupling, DependencyGraph, Effect, Freeze, Role, Slot, build_groups
from .rules import AnalysisContext, GraphView, Rule, RuleTable
from .probing import ChannelProbe
from .rules.base import Unsupported, describe_node, freeze_inputs, queried_dims
from .trace import value_meta

def attention_inputs(gm: fx.GraphModule, rules: RuleTable, modules) -> dict[str, frozenset[int]]:
    """Data-movement and broadcasting nodes on the way into an op whose rule `reads_heads` (matmul,
    attention), each with the dims of its output that are no heads dim: the first operand's last dim (q's
    head_dim in q @ k^T and in attention) and each other operand's last two (k^T's head_dim and positions, the
    positions and head_dim of v in weights @ v).

    Dims are followed, not sizes: each carrier says which dims of its inputs land in the marked dims of its
    output (`Rule.head_dims_of_input`: a permute moves them, a reshape that splits channels into (heads,
    head_dim) marks head_dim alone, so the split keeps the heads as its channel dim and attention is pruned by
    whole heads). Broadcasting ops on the way (rotary embeddings: q * cos + rotate_half(q) * sin) and copies keep
    the path open (rules with `carries_heads`); a slice or concatenation along head_dim (partial rotary; a fused
    (heads, 3 x head_dim) projection chunked into q, k, v) marks the dim its parts come from. A size shared by
    another dim (the positions of a relative embedding as many as the channels) marks nothing it does not reach.
    """
    def rule(n):
        return rules.for_node(n, modules) or Rule()  # no rule: no capability

    stack = []
    for n in gm.graph.nodes:
        if rule(n).reads_heads and n.all_input_nodes:
            first, *others = n.all_input_nodes
            stack += [(first, _last_dims(first, 1))] + [(a, _last_dims(a, 2)) for a in others]
    marked: dict[str, frozenset[int]] = {}
    while stack:
        n, dims = stack.pop()
        carrier = rule(n)
        if not carrier.carries_heads or dims <= marked.get(n.name, frozenset()):
            continue
        marked[n.name] = dims = dims | marked.get(n.name, frozenset())
        stack.extend((a, carrier.head_dims_of_input(n, a, dims)) for a in n.all_input_nodes)
    return marked


def _last_dims(node: fx.Node, count: int) -> frozenset[int]:
    """The last `count` dims of a tensor node, {} for anything else."""
    shape = getattr(value_meta(node), "shape", None)
    return frozenset(range(max(len(shape) - count, 0), len(shape))) if shape is not None else frozenset()


_INT_ARITHMETIC = (operator.floordiv, operator.mul, operator.add, operator.sub, operator.neg, operator.mod)


def _used_as_value(node: fx.Node, rules: RuleTable, modules, depth: int = 8) -> fx.Node | None:
    """The first user that reads an int derived from a size query as a value, not as a shape argument."""
    for user in node.users:
        rule = rules.for_node(user, modules)
        if user.op == "call_function" and user.target in _INT_ARITHMETIC and isinstance(value_meta(user), int):
            found = _used_as_value(user, rules, modules, depth - 1) if depth else user
            if found is not None:
                return found
        elif rule is not None and rule.rewrites_size_arguments and user.args[0] is not node:
            continue
        elif user.target is operator.getitem and user.args[0] is not node:
            continue  # a slice bound: rewritten with the slice
        else:
            return user
    return None


def _channel_counts_as_values(gm: fx.GraphModule, ctx: AnalysisContext, rules: RuleTable) -> list[Freeze]:
    """Freeze channels whose count the model reads with x.size()/x.shape and uses in arithmetic on tensors.

    `attn * (c // heads) ** -0.5` with c the channel count would change meaning once c shrinks;
    the same count in `reshape(b, n, c)` or `view(b, g, c // g, h, w)` is a shape and is rewritten.
    """
    freezes = []
    for node in gm.graph.nodes:
        is_query = node.target in (operator.getitem, torch.ops.aten.sym_size.int) or (
            node.op == "call_method" and node.target == "size")
        if not is_query or not isinstance(value_meta(node), int):
            continue
        for tensor_name, dim in queried_dims(node, depth=1):
            if ctx.declared.get(tensor_name) != dim:
                continue
            user = _used_as_value(node, rules, ctx.modules)
            if user is not None:
                slot = Slot(tensor_name, dim)
                ctx.sizes.setdefault(slot, value_meta(node))  # a size query's value is that dim's size
                freezes.append(Freeze(slot, f"its channel count is read by `{node.name}` and used as a value by "
                                            f"{describe_node(user, ctx.modules)}"))
    return freezes


def _declare_constant(node: fx.Node, ctx: AnalysisContext) -> list[Coupling]:
    """A floating-point parameter/buffer read with get_attr that is a vector (one dim > 1) carries channels on
    that dim. An integer or bool buffer holds indices or flags (position ids, token type ids, masks): an index
    space, not channels; an op that mixes it with channels finds no channel dim on it and freezes them."""
    tensor = ctx.constant(node)
    if tensor is None or not (tensor.is_floating_point() or tensor.is_complex()):
        return []
    dims = [d for d in range(tensor.ndim) if tensor.shape[d] > 1]
    if len(dims) != 1:
        return []
    ctx.declared[node.name] = dims[0]
    role = Role.PRODUCER if node.target in ctx.params else Role.BUFFER
    return [Coupling(ctx.output_slot(node, dims[0]), ctx.param_slot(node.target, dims[0], role))]


def _freeze_shared_parameters(node: fx.Node, ctx: AnalysisContext, reason: str) -> list[Freeze]:
    """Every dim of a tied parameter that a module without a rule reads is frozen: another reader must not cut it."""
    if node.op != "call_module":
        return []
    prefix = f"{node.target}." if node.target else ""
    freezes = []
    for attr, p in ctx.module(node).named_parameters(remove_duplicate=False):
        qualname = prefix + attr
        if qualname in ctx.tied:
            freezes += [Freeze(ctx.param_slot(qualname, d, Role.PRODUCER), reason) for d in range(p.dim())]
    return freezes


def rule_errors_raise(strict: bool) -> bool:
    """Whether a failing rule raises (strict, or GRAPHPRUNE_RULE_ERRORS=raise) instead of freezing its channels."""
    return strict or os.environ.get("GRAPHPRUNE_RULE_ERRORS") == "raise"


def _output_freezes(node: fx.Node, ctx: AnalysisContext) -> list[Freeze]:
    """Channels that reach the model's output keep their count: the pruned model is a drop-in replacement."""
    freezes = []
    for a in tree_leaves(node.args):
        d = ctx.channel_dim(a) if isinstance(a, fx.Node) else None
        if ctx.is_tensor(a) and isinstance(d, int):
            freezes.append(Freeze(ctx.input_slot(a, d), f"reaches model output through `{a.name}`"))
    return freezes


def _pass_on_input_origin(node: fx.Node, ctx: AnalysisContext) -> None:
    """A node without channels whose tensor inputs all come from a model input (a reshape of the input before the
    first layer) passes that origin on, so a consumer's freeze names the input, not the reshape."""
    if ctx.declared.get(node.name) is not None:
        return
    inputs = [a for a in node.all_input_nodes if ctx.is_tensor(a)]
    origins = {ctx.producer_note.get(a.name) or (f"channels come from model input `{a.name}`"
                                                  if a.op == "placeholder" else None) for a in inputs}
    if inputs and len(origins) == 1 and None not in origins:
        ctx.producer_note[node.name] = origins.pop()


def _effect(node: fx.Node, rules: RuleTable, ctx: AnalysisContext, probe: ChannelProbe | None,
            strict: bool) -> tuple[Effect | None, str | None, str | None]:
    """(effect, problem, probed note) of one op: its rule's effect, a probed one, or why it has none."""
    rule = rules.for_node(node, ctx.modules)
    if rule is None:
        effect = probe.couple(node, ctx) if probe is not None else None
        described = describe_node(node, ctx.modules)
        if effect is None:
            return None, f"{described} has no rule", None
        return effect, None, f"{described}: channel-wise on dim {effect.out_dim} (probed)"
    try:
        return rule.couple(node, ctx), None, None
    except Unsupported as exc:
        return None, f"{describe_node(node, ctx.modules)} {exc}", None
    except Exception as exc:  # a bug in the rule: users get a freeze, developers the error
        described = describe_node(node, ctx.modules)
        if rule_errors_raise(strict):
            raise RuleError(f"rule {type(rule).__name__} failed on {described}: {type(exc).__name__}: {exc}") from exc
        return None, f"{described}: rule {type(rule).__name__} failed ({type(exc).__name__}: {exc})", None


def build_dependency_graph(gm: fx.GraphModule, rules: RuleTable, *, strict: bool = False,
                           probe: ChannelProbe | None = None, tables: GraphView | None = None) -> DependencyGraph:
    """Channel groups of `gm` (whose nodes carry values from `trace.record_values`). Does not modify `gm`.

    With a `probe`, an op without a rule that is shown to be channel-wise (probing.py) carries
    its channels through, and is listed in `DependencyGraph.probed`. `tables`: a GraphView of `gm` whose
    module, parameter and buffer tables the analysis reads (GraphView's `tables`).
    """
    ctx = AnalysisContext(gm, tables)
    ctx.head_splits = attention_inputs(gm, rules, ctx.modules)
    couplings, freezes, unsupported, probed, equal_parts = [], [], [], [], []
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            couplings.extend(_declare_constant(node, ctx))
        elif node.op == "output":
            freezes.extend(_output_freezes(node, ctx))
        elif node.op != "placeholder":
            effect, problem, note = _effect(node, rules, ctx, probe, strict)
            probed += [note] if note else []
            if effect is not None:
                ctx.declared[node.name] = effect.out_dim
                couplings.extend(effect.couplings)
                freezes.extend(effect.freezes)
                equal_parts.extend(effect.equal_parts)
                _pass_on_input_origin(node, ctx)
            elif ctx.is_tensor(node) or any(ctx.is_tensor(a) for a in node.all_input_nodes):  # touches tensors
                unsupported.append(problem)
                freezes.extend(freeze_inputs(node, ctx, problem))
                freezes.extend(_freeze_shared_parameters(node, ctx, problem))
                ctx.producer_note[node.name] = f"produced by {problem}"
    if strict and unsupported:
        raise UnsupportedOpError(
            "strict=True and the graph has ops graphprune cannot follow: " + "; ".join(unsupported)
            + ". Fix: add a rule with default_rules().with_rule(...), or call with strict=False to freeze their channels."
        )
    freezes.extend(_channel_counts_as_values(gm, ctx, rules))
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    graph = build_groups(ctx.sizes, couplings + ctx.ties, freezes + ctx.freezes, order, ctx.declared)
    graph = attach_equal_counts(graph, equal_parts)
    groups = _without_constants_kept_whole(graph, gm, freezes + ctx.freezes)
    kept = {s for g in groups for s in g.members}
    edges = tuple(e for e in graph.slot_edges if e[0] in kept)
    return replace(graph, groups=groups, slot_edges=edges, unsupported=tuple(unsupported), probed=tuple(probed))


def _constant_nodes(gm: fx.GraphModule) -> set[str]:
    """Nodes computed from parameters and buffers alone: get_attr, and ops whose every input is such a node."""
    names: set[str] = set()
    for n in gm.graph.nodes:
        if n.op == "get_attr" or (n.op != "output" and n.all_input_nodes
                                  and all(a.name in names for a in n.all_input_nodes)):
            names.add(n.name)
    return names


def _without_constants_kept_whole(graph: DependencyGraph, gm: fx.GraphModule, freezes: list[Freeze]) -> tuple:
    """The groups, less those only constants carry (parameters, and tensors computed from them alone: Gemma's
    1 + w) that are frozen only as kept whole (Freeze.kept_whole: a per-head norm weight over the head_dim).
    No tensor computed from the model's inputs carries their channels and no rule cuts them: like the head_dim
    they span, they are no channel group (their tensors, in no group, are never sliced)."""
    constants = _constant_nodes(gm)
    lost = {f.slot for f in freezes if not f.kept_whole}

    def kept_whole(g) -> bool:
        return g.frozen and all((s.is_param or s.name in constants) and s not in lost for s in g.members)
    return tuple(g for g in graph.groups if not kept_whole(g))
