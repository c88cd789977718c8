"""Mixture-of-experts ops: routing by data-dependent indices, and grouped matrix products over experts.

A sparse MoE block (Mixtral, Qwen3-MoE, GPT-OSS as Hugging Face writes them) routes tokens (rows) to
experts; hidden channels stay on the last dim through every op below, and an expert's intermediate
channels are the columns of its slice of a fused (experts, in, out) weight:

- aten.index.Tensor (tokens gathered by expert, a fused bias (E, out)[expert_ids]) is the indexing family
  (rules/indexing.py): channels off the indexed dims pass through.
- `IndexAddRule`, y = x.index_add(dim, index, src): y[..., index[k], ...] += src[..., k, ...] along
  `dim`; every other dim of x, src and y is the same position, so channels off `dim` are tied.
- `RankRule`, topk/sort/max.dim/min.dim along `dim`: values and indices keep every other dim's positions,
  so channels off `dim` pass through; along the channel dim the result (which experts win) changes when
  channels go: frozen (the router's logits: the experts are kept).
- `GroupedMmRule`, y[s] = x[s] W[e(s)] (aten._grouped_mm, transformers' grouped_mm_fallback): rows are
  grouped by expert (offsets), every expert's matrix has the same (in, out) dims. Column k of x meets row k
  of every W[e] (CONSUMER) and column j of y comes from column j of every W[e] (PRODUCER), so one channel
  is one position of a fused weight dim in all experts at once (exact: a kept expert channel computes the
  same product). W may be the parameter or its permute/transpose with the expert dim first.
- `ExpertBmmRule`, bmm with one operand W[expert_ids] gathered from a fused (E, ., .) parameter (transformers'
  batched_mm experts): the same per-row linear layer, so the same couplings; any other bmm is a matrix product.
"""
from __future__ import annotations

import copy
import math
import operator
import warnings

import torch
import torch.fx as fx

from ..groups import Coupling, Effect, Freeze, Role
from .base import (AnalysisContext, GraphView, LayerKind, MacTerm, Rule, Unsupported, WeightedLayer, describe_node,
                   freeze_inputs)
from .attention import MatMulRule
from .callsite import arg, channel_factor

A = torch.ops.aten


def _index_tensors(node: fx.Node, ctx: AnalysisContext) -> list[tuple[int, fx.Node]]:
    """(dim, index tensor) of aten.index.Tensor(x, [i0, None, i2...]); boolean masks are not followed."""
    entries = [(k, i) for k, i in enumerate(node.args[1]) if i is not None]
    if any(not ctx.is_tensor(i) or ctx.value(i).dtype is torch.bool for _, i in entries):
        raise Unsupported("indexes with a boolean mask or a non-tensor index")
    return entries


def _gathered_dim(d: int, indexed: list[int], index_rank: int) -> int:
    """Where dim `d` of x (not indexed) lands in x[indices]: adjacent indexed dims are replaced in place by the
    index result's dims, separated ones move it to the front (NumPy advanced indexing)."""
    if indexed == list(range(indexed[0], indexed[-1] + 1)):
        return d if d < indexed[0] else d - len(indexed) + index_rank
    return index_rank + sum(1 for k in range(d) if k not in indexed)


class IndexAddRule(Rule):
    """x.index_add(dim, index, src[, alpha]) in every spelling (self, dim, index, source): channels off `dim` tied."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, dim, index, src = (arg(node, 0, "input"), arg(node, 1, "dim"), arg(node, 2, "index"),
                              arg(node, 3, "source"))
        rank = len(ctx.shape(x))
        d = ctx.channel_dim(src) if isinstance(ctx.channel_dim(src), int) else ctx.channel_dim(x)
        freezes = freeze_inputs(node, ctx, f"{describe_node(node)} reads `{index.name}` as positions") \
            if isinstance(ctx.channel_dim(index), int) else ()
        if not isinstance(d, int):
            return Effect(None, freezes=freezes)
        if d == dim % rank:
            reason = f"{describe_node(node)} adds into channels chosen by data-dependent indices"
            return Effect(None, freezes=freezes + freeze_inputs(node, ctx, reason))
        out = ctx.output_slot(node, d)
        couplings = (Coupling(ctx.input_slot(x, d), out), Coupling(ctx.input_slot(src, d), out))
        return Effect(d, couplings=couplings, freezes=freezes)


class IndexPutRule(Rule):
    """aten.index_put(x, indices, values, accumulate): y = x with y[indices] = (or +=) values, index_add as
    torch.export writes it. A dim of x that no index names keeps its positions in y, and `values` (broadcast to
    x[indices]'s shape) carries the same channel where x[indices] puts that dim; an indexed channel dim freezes."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, values = node.args[0], node.args[2]
        entries = _index_tensors(node, ctx)
        d, indexed = ctx.channel_dim(x), [k for k, _ in entries]
        if not isinstance(d, int) or not entries:  # values' channels, if any, would land in untracked positions
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} writes into a tensor "
                                                                 "whose channels graphprune cannot follow"))
        if d in indexed or any(isinstance(ctx.channel_dim(i), int) for _, i in entries):
            reason = f"{describe_node(node)} writes channels chosen by data-dependent indices"
            return Effect(None, freezes=freeze_inputs(node, ctx, reason))
        shape = ctx.shape(x)
        index_rank = len(torch.broadcast_shapes(*(ctx.shape(i) for _, i in entries)))
        gathered = _gathered_dim(d, indexed, index_rank)
        local = gathered - (len(shape) - len(indexed) + index_rank - len(ctx.shape(values)))
        out = ctx.output_slot(node, d)
        couplings, freezes = [Coupling(ctx.input_slot(x, d), out)], ()
        if ctx.is_tensor(values) and local >= 0 and ctx.shape(values)[local] > 1:
            couplings.append(Coupling(ctx.input_slot(values, local), out))  # freezes values' other channel dims
        elif ctx.is_tensor(values) and isinstance(ctx.channel_dim(values), int):
            freezes = (Freeze(ctx.input_slot(values, ctx.channel_dim(values)),
                              f"{describe_node(node)} broadcasts `{values.name}` over the channels of `{x.name}`"),)
        return Effect(d, couplings=tuple(couplings), freezes=freezes)


class RankRule(Rule):
    """op(x, ..., dim, ...) -> (values, indices) ranked or reduced along `dim` (topk, sort, max.dim, min.dim).

    `dim_at`: the position of `dim`; `default_dim`: its default; `keeps_rank`: the outputs keep x's rank
    (topk, sort), else `keepdim_at` says whether `dim` stays as size 1 (max.dim, min.dim).
    """

    def __init__(self, dim_at: int, default_dim: int = -1, keeps_rank: bool = True, keepdim_at: int | None = None):
        self.dim_at, self.default_dim, self.keeps_rank, self.keepdim_at = dim_at, default_dim, keeps_rank, keepdim_at

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x = node.args[0]
        d = ctx.channel_dim(x)
        if not isinstance(d, int):
            return Effect(None)
        rank = len(ctx.shape(x))
        dim = arg(node, self.dim_at, "dim", self.default_dim) % rank
        if dim == d:
            reason = (f"{describe_node(node)} ranks along the channel dim (router logits over experts: which "
                      "positions win changes when channels are removed)")
            return Effect(None, freezes=freeze_inputs(node, ctx, reason))
        keepdim = self.keeps_rank or arg(node, self.keepdim_at, "keepdim", False)
        out_d = d if keepdim or d < dim else d - 1
        x_slot = ctx.input_slot(x, d)
        parts = [u for u in node.users if u.target is operator.getitem and u.args[1] in (0, 1)]
        if len(parts) != len(node.users):
            return Effect(None, freezes=(Freeze(x_slot, f"the outputs of {describe_node(node)} are used whole"),))
        return Effect((out_d, out_d), couplings=tuple(Coupling(x_slot, ctx.output_slot(u, out_d)) for u in parts))


def _expert_weight(w: fx.Node, view: GraphView) -> tuple[str, tuple[int, ...]] | None:
    """(parameter name, operand dim -> parameter dim) of a 3-D expert weight read directly or through a
    permute/transpose that keeps the expert dim first; None for a computed weight."""
    perm = (0, 1, 2)
    if w.op == "call_function" and w.target is A.permute.default:
        perm, w = tuple(p % 3 for p in w.args[1]), w.args[0]
    elif w.op == "call_function" and w.target is A.transpose.int:
        a, b = w.args[1] % 3, w.args[2] % 3
        perm = tuple(b if k == a else a if k == b else k for k in range(3))
        w = w.args[0]
    tensor = view.constant(w) if isinstance(w, fx.Node) else None
    if tensor is None or tensor.ndim != 3 or perm[0] != 0:
        return None
    return w.target, perm


_GROUPED_MM_ALIGNMENT = 16  # bytes: torch._grouped_mm checks that strides are multiples of it


class GroupedMmRule(Rule):
    """y = grouped_mm(x (S, in), W (E, in, out), offs): see the module docstring. Other layouts freeze."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, w = node.args[0], node.args[1]
        weight = _expert_weight(w, ctx) if isinstance(w, fx.Node) else None
        if weight is None or len(ctx.shape(x)) != 2 or len(ctx.shape(node)) != 2 or arg(node, 3, "bias") is not None:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} has a computed or "
                                                                 "non-3-D expert weight, or a bias"))
        name, perm = weight
        role = Role.PRODUCER if name in ctx.params else Role.BUFFER
        couplings = (Coupling(ctx.input_slot(x, 1), ctx.param_slot(name, perm[1], Role.CONSUMER)),
                     Coupling(ctx.output_slot(node, 1), ctx.param_slot(name, perm[2], role)))
        return Effect(1, couplings=couplings)

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        """Every row is one (in x out) product: S * in * out, scaling with both channel dims."""
        x = node.args[0]
        return (MacTerm(math.prod(view.shape(node)) * view.shape(x)[-1],
                        channel_factor(view, node, 1) + channel_factor(view, x, 1)),)

    def weighted_layer(self, node: fx.Node, view: GraphView) -> WeightedLayer | None:
        """A linear layer per expert. torch's grouped_mm kernels need 16-byte aligned strides, so the kept widths
        stay multiples of 16 bytes of the weight's dtype (4 float32, 8 bf16), or the caller's class fails to run
        its own grouped_mm once pruned (the traced graph may hold transformers' fallback, which does not care)."""
        weight = _expert_weight(node.args[1], view) if isinstance(node.args[1], fx.Node) else None
        if weight is None:
            return None
        itemsize = view.value(node.args[0]).dtype.itemsize
        return WeightedLayer(LayerKind.LINEAR, (weight[0],), step=max(1, _GROUPED_MM_ALIGNMENT // itemsize))


def _gathered_expert(w: fx.Node, view: GraphView) -> str | None:
    """The 3-D parameter that `w` gathers by expert id (aten.index.Tensor(param, [ids]), ids on dim 0 only)."""
    if not (isinstance(w, fx.Node) and w.op == "call_function" and w.target is A.index.Tensor):
        return None
    param, indices = w.args[0], w.args[1]
    tensor = view.constant(param)
    if tensor is None or tensor.ndim != 3 or len(indices) != 1 or len(view.shape(indices[0])) != 1:
        return None
    return param.target


class ExpertBmmRule(MatMulRule):
    """bmm(W[ids] (S, out, in), x (S, in, 1)) or bmm(x (S, 1, in), W[ids] (S, in, out)): each row's expert
    weight gathered from a fused (E, ., .) parameter (transformers' batched_mm experts), a linear layer per row:
    x's `in` ~ the parameter's `in` dim (CONSUMER) in every expert, y's `out` ~ its `out` dim (PRODUCER). Any
    other bmm is a matrix product (MatMulRule)."""

    def _read(self, node: fx.Node, view: GraphView) -> tuple | None:
        """(x, parameter, x's channel dim, parameter's in dim, parameter's out dim, y's channel dim) or None."""
        a, b = node.args[0], node.args[1]
        wa, wb = _gathered_expert(a, view), _gathered_expert(b, view)
        if wa is not None and wb is None:
            return b, wa, 1, 2, 1, 1
        if wb is not None and wa is None:
            return a, wb, 2, 1, 2, 2
        return None

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        read = self._read(node, ctx)
        if read is None:
            return super().couple(node, ctx)
        x, name, x_dim, w_in, w_out, out_dim = read
        role = Role.PRODUCER if name in ctx.params else Role.BUFFER
        return Effect(out_dim, couplings=(Coupling(ctx.input_slot(x, x_dim), ctx.param_slot(name, w_in, Role.CONSUMER)),
                                          Coupling(ctx.output_slot(node, out_dim), ctx.param_slot(name, w_out, role))))

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        read = self._read(node, view)
        if read is None:
            return super().cost(node, view)
        x, _, x_dim, _, _, out_dim = read
        return (MacTerm(math.prod(view.shape(node)) * view.shape(x)[x_dim],
                        channel_factor(view, node, out_dim) + channel_factor(view, x, x_dim)),)

    def weighted_layer(self, node: fx.Node, view: GraphView) -> WeightedLayer | None:
        read = self._read(node, view)
        return WeightedLayer(LayerKind.LINEAR, (read[1],)) if read is not None else None


def grouped_mm_ops() -> tuple:
    """The grouped matrix products present in this process: aten._grouped_mm, and transformers' custom
    grouped_mm_fallback once transformers has registered it (torch.ops namespaces are filled at import)."""
    ops = [A._grouped_mm.default]
    fallback = getattr(getattr(torch.ops, "transformers", None), "grouped_mm_fallback", None)
    if fallback is not None:
        ops.append(fallback.default)
    return tuple(ops)


def grouped_mm_as_matmul(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """grouped_mm in plain ops (ONNX has no grouped product): row s belongs to expert e(s) = #{e: offs[e] <= s}
    and y[s] = x[s] W[e(s)]; rows past offs[-1] (no expert) are 0, as in transformers' fallback."""
    rows = torch.arange(x.shape[0], device=x.device)
    expert = (rows.unsqueeze(1) >= offs.unsqueeze(0)).sum(-1)  # (S,)
    mask = (expert.unsqueeze(1) == torch.arange(w.shape[0], device=x.device).unsqueeze(0)).to(x.dtype)  # (S, E)
    per_expert = torch.matmul(x.unsqueeze(0), w)  # (E, S, out)
    return (mask.t().unsqueeze(-1) * per_expert).sum(0)


def _empty_as_zeros(size, physical_layout, *, dtype=None, layout=None, device=None, pin_memory=None):
    """aten.empty_permuted (empty_like in the routing's inverse permutation) as zeros: an uninitialised tensor
    may hold any value, so zeros compute the same model (ONNX has no empty_permuted)."""
    return torch.zeros(size, dtype=dtype, device=device)


def without_grouped_mm(model: torch.nn.Module) -> torch.nn.Module:
    """`model` itself, or for a GraphModule with grouped products a copy where each is `grouped_mm_as_matmul`
    and the routing's empty_permuted is zeros (what ONNX export needs); the copy shares the parameters."""
    ops = grouped_mm_ops()
    if not isinstance(model, fx.GraphModule) or not any(n.target in ops for n in model.graph.nodes):
        return model
    with warnings.catch_warnings():  # torch 2.13's copy of the graph's pytree specs warns about its deprecated LeafSpec
        warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
        graph = copy.deepcopy(model.graph)
    for node in graph.nodes:
        if node.target in ops and arg(node, 3, "bias") is None and arg(node, 4, "out_dtype") is None:
            node.target, node.args, node.kwargs = grouped_mm_as_matmul, (*node.args[:2], arg(node, 2, "offs")), {}
        elif node.target is A.empty_permuted.default:
            node.target = _empty_as_zeros
    return fx.GraphModule(model, graph)


def moe_rules() -> dict:
    """Every spelling of the MoE op families above -> its rule."""
    T = torch.Tensor
    index_add = IndexAddRule()
    table = {A.topk.default: RankRule(2), A.sort.default: RankRule(1),
             A.max.dim: RankRule(1, keeps_rank=False, keepdim_at=2),
             A.min.dim: RankRule(1, keeps_rank=False, keepdim_at=2)}
    table.update({A.index_put.default: IndexPutRule(), torch.topk: RankRule(2), T.topk: RankRule(2),
                  torch.sort: RankRule(1), T.sort: RankRule(1)})
    table.update((op, index_add) for op in (A.index_add.default, T.index_add, T.index_add_, torch.index_add))
    table.update((op, GroupedMmRule()) for op in grouped_mm_ops())
    table[A.bmm.default] = ExpertBmmRule()
    return table
