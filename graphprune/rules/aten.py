"""The rule table for graphs exported by torch.export and decomposed to Core ATen.

`aten_rules()` maps `OpOverload`s to rules. Ops with weights are in `aten_layers`; the
rest reuse the fx rules where ATen's argument layout matches theirs:

- element-wise unary ops, y[..., c, ...] = f(x[..., c, ...]) (activations, math, casts,
  clone, eval-mode dropout): `ElementwiseRule` (the shape must not change).
- broadcasting n-ary ops, y = f(a, b, ...) with operands aligned from the right (add,
  sub, mul, div, pow, where, comparisons, clamp with tensor bounds): `BinaryRule`.
- reductions over `dim` (mean, sum, amax, var, vector norm...): channels pass through,
  shifted when keepdim is false, unless the channel dim is reduced (then frozen: the
  result would change). An empty dim list means every dim.
- pooling, upsampling, spatial padding act on the trailing 1, 2 or 3 dims: `SpatialRule`.
- data movement is label-pushed (`MovementRule`, see rules/movement.py); the ops whose
  arguments hold channel counts rewrite them in `shrink`: view/_unsafe_view/reshape/
  expand sizes (`ReshapeRule`), split sizes, slice_scatter bounds (slice bounds: indexing.py); a size computed from
  the symbolic batch dim (`sym_size`, see frontends.dynamic_batch) keeps its batch factor.
- a gather by integer index tensors (index.Tensor) and aten.gather are indexing, with getitem (rules/indexing.py).
- ops that create tensors from nothing (full, arange, rand...) carry no channels.

An op with no rule is never assumed element-wise: its channels are frozen. `FROZEN_BY_DESIGN`
lists the Core ATen ops that deliberately have no rule, each with its reason; the test
suite checks that every Core ATen op is in one of the two tables.
"""
from __future__ import annotations

import operator
from types import MappingProxyType

import numpy as np

import torch
import torch.fx as fx

from ..groups import Coupling, Effect, Freeze
from .attention import MatMulRule, ScaledDotProductAttentionRule
from .base import AnalysisContext, Rule, RuleTable, ShrinkContext, describe_node, freeze_inputs
from .elementwise import (BinaryRule, ElementwiseRule, NormaliseAlongRule, PadRule, ReduceRule, ShapeQueryRule,
                          SpatialRule, passthrough)
from .callsite import arg, cut_dim, kept_bounds, kept_on_dim
from .families import family_rules
from .indexing import GetItemRule
from .moe import moe_rules
from .movement import ATEN_RESHAPES, MovementRule, ReshapeRule, SplitRule, SqueezeRule, as_aten_split
from .statistics import NormalisingStatisticRule
from .transformer import GroupedQuery, RepeatKVRule

__all__ = ["aten_rules", "ruled_ops", "FROZEN_BY_DESIGN"]

A = torch.ops.aten


class AlongDimRule(Rule):
    """op(x, dim, ...) that keeps x's shape and acts along `dim` (cumsum, index_select): channels pass through
    unless `dim` is the channel dim, which freezes them with `reason`."""

    def __init__(self, reason: str):
        self.reason = reason

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, dim = node.args[:2]
        d = ctx.channel_dim(x)
        if not isinstance(d, int):
            return Effect(None)
        if dim % len(ctx.shape(x)) == d:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} {self.reason}"))
        return passthrough(node, ctx, x, d)


class PoolWithIndicesRule(Rule):
    """max_pool{2,3}d_with_indices(x, ...) -> (values, indices): both keep x's channels, indices are positions in H, W."""

    def __init__(self, spatial: int):
        self.spatial = spatial

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x = node.args[0]
        d = ctx.channel_dim(x)
        if not isinstance(d, int):
            return Effect(None)
        rank = len(ctx.shape(x))
        if d >= rank - self.spatial:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} pools over the channel dim"))
        x_slot = ctx.input_slot(x, d)
        couplings = [Coupling(x_slot, ctx.output_slot(u, d)) for u in node.users
                     if u.target is operator.getitem and u.args[1] in (0, 1)]
        if any(u.target is not operator.getitem for u in node.users):
            return Effect(None, freezes=(Freeze(x_slot, f"the outputs of {describe_node(node)} are used whole"),))
        return Effect((d, d), couplings=tuple(couplings))


class SliceScatterRule(Rule):
    """slice_scatter(x, src, dim, start, end, step): y = x, then y[start:end:step along dim] = src (functionalised
    `x[..., a:b] = src`, `x[a:b].zero_()`). With x's and src's channels on one dim c: if c is not `dim`,
    y[..., k, ...] is x[..., k, ...] or src[..., k, ...], and channel k of all three goes together; if c is `dim`
    (step 1), y[k] = src[k - start] for start <= k < end and x[k] elsewhere, so src's position j is y's start + j
    and `shrink` re-cuts the bounds to the kept positions (as a slice's). Exact either way. A src or x whose
    channels nothing follows (a constant written into some channels) freezes them."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, src = node.args[:2]
        d = ctx.channel_dim(x)
        if not isinstance(d, int) and not isinstance(ctx.channel_dim(src), int):
            return Effect(None)
        dim = cut_dim(node, ctx, 2)
        if d != ctx.channel_dim(src) or (d == dim and arg(node, 5, "step", 1) != 1):
            reason = f"{describe_node(node)} writes `{src.name}` into channels graphprune cannot match"
            return Effect(None, freezes=freeze_inputs(node, ctx, reason))
        out = ctx.output_slot(node, d)
        if d != dim:
            return Effect(d, couplings=(Coupling(ctx.input_slot(x, d), out), Coupling(ctx.input_slot(src, d), out)))
        start, _, _ = slice(arg(node, 3, "start"), arg(node, 4, "end")).indices(ctx.shape(x)[d])
        j = np.arange(ctx.shape(src)[d])
        return Effect(d, couplings=(Coupling(ctx.input_slot(x, d), out), Coupling(out, ctx.input_slot(src, d), start + j, j)))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        x, dim = node.args[0], cut_dim(node, ctx, 2)
        kept = kept_on_dim(ctx, x, dim)
        if kept is None:
            return
        start, stop, _ = slice(arg(node, 3, "start"), arg(node, 4, "end")).indices(ctx.value(x).shape[dim])
        node.args = (x, node.args[1], dim, *kept_bounds(kept, start, stop)) + tuple(node.args[5:])
        node.kwargs = {k: v for k, v in node.kwargs.items() if k not in ("dim", "start", "end")}


class CreationRule(Rule):
    """full, arange, rand, empty...: a new tensor whose channels nothing follows (consumers that need them freeze)."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        return Effect(None)


class MetadataAssertRule(Rule):
    """_assert_tensor_metadata(x, size, stride, dtype, ...): checks x, returns nothing; a checked size or stride
    would fail once channels are removed, so then x's channels are frozen."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        if arg(node, 1, "size") is not None or arg(node, 2, "stride") is not None:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} checks a size or stride"))
        return Effect(None)


UNARY = (
    A.abs.default, A.acos.default, A.acosh.default, A.asin.default, A.asinh.default, A.atan.default, A.atanh.default,
    A.bitwise_not.default, A.ceil.default, A.cos.default, A.cosh.default, A.erf.default, A.exp.default, A.expm1.default,
    A.floor.default, A.isinf.default, A.isnan.default, A.log.default, A.log10.default, A.log1p.default, A.log2.default,
    A.logical_not.default, A.neg.default, A.reciprocal.default, A.round.default, A.rsqrt.default, A.sign.default,
    A.sin.default, A.sinh.default, A.sqrt.default, A.tan.default, A.trunc.default,
    A.relu.default, A.sigmoid.default, A.tanh.default, A.gelu.default, A.elu.default, A.leaky_relu.default,
    A.hardtanh.default, A.clamp.default, A.silu.default, A.hardswish.default, A.hardsigmoid.default, A.mish.default,
    A.relu6.default, A.clone.default, A.alias.default, A._to_copy.default, A.fill.Scalar, A.full_like.default, A.zeros_like.default,
    A.ones_like.default, A.dropout.default, A.detach.default, A.lift_fresh_copy.default,
    A.pow.Tensor_Scalar,
)
"""y = f(x, scalars...), one element at a time."""

BROADCASTING = (
    A.add.Tensor, A.add.Scalar, A.sub.Tensor, A.sub.Scalar, A.rsub.Scalar, A.mul.Tensor, A.mul.Scalar,
    A.div.Tensor, A.div.Scalar, A.div.Tensor_mode, A.div.Scalar_mode, A.pow.Tensor_Tensor, A.pow.Scalar,
    A.fmod.Tensor, A.fmod.Scalar, A.remainder.Tensor, A.remainder.Scalar, A.atan2.default, A.atan2.out,
    A.maximum.default, A.minimum.default, A.where.self, A.clamp.Tensor, A.copy.default,
    A.eq.Tensor, A.eq.Scalar, A.ne.Tensor, A.ne.Scalar, A.lt.Tensor, A.lt.Scalar, A.le.Tensor, A.le.Scalar,
    A.gt.Tensor, A.gt.Scalar, A.ge.Tensor, A.ge.Scalar, A.logical_and.default, A.logical_or.default,
    A.logical_xor.default, A.bitwise_and.Tensor, A.bitwise_and.Scalar, A.bitwise_or.Tensor, A.bitwise_or.Scalar,
    A.bitwise_xor.Tensor, A.bitwise_xor.Scalar,
)
"""y = f(a, b, ...) with operands broadcast against each other."""

REDUCTIONS = {
    A.mean.dim: (1, 2), A.sum.dim_IntList: (1, 2), A.amax.default: (1, 2), A.amin.default: (1, 2),
    A.any.dim: (1, 2), A.any.dims: (1, 2), A.prod.dim_int: (1, 2), A.var.dim: (1, 3), A.var.correction: (1, None),
    A.linalg_vector_norm.default: (2, 3),
    A.mean.default: (None, None), A.sum.default: (None, None), A.prod.default: (None, None), A.any.default: (None, None),
}
"""op -> (position of `dim`, position of `keepdim`); None: all dims / keyword only."""

SPATIAL = {
    A.avg_pool1d.default: 1, A.adaptive_avg_pool1d.default: 1, A.avg_pool2d.default: 2, A.avg_pool3d.default: 3, A._adaptive_avg_pool2d.default: 2,
    A._adaptive_avg_pool3d.default: 3, A.adaptive_avg_pool2d.default: 2, A.max_pool2d.default: 2,
    A.upsample_nearest2d.vec: 2, A.upsample_bilinear2d.vec: 2, A.upsample_nearest2d.default: 2,
    A.upsample_bilinear2d.default: 2, A.reflection_pad1d.default: 1, A.reflection_pad2d.default: 2,
    A.reflection_pad3d.default: 3, A.replication_pad2d.default: 2, A.replication_pad3d.default: 3,
}
"""op -> number of trailing spatial dims it acts on."""

MOVEMENT = (
    A.permute.default, A.t.default, A.transpose.int, A.unsqueeze.default, A.cat.default, A.stack.default,
    A.unbind.int, A.flip.default, A.repeat.default, A.pixel_shuffle.default, A.pixel_unshuffle.default,
    A.channel_shuffle.default, A.flatten.using_ints,
)
SQUEEZES = (A.squeeze.dim, A.squeeze.dims, A.squeeze.default)
CREATION = (
    A.arange.start_step, A.arange.default, A.arange.start, A.empty.memory_format, A.empty_strided.default,
    A.full.default, A.zeros.default, A.ones.default, A.rand.default, A.randn.default, A.randperm.default,
    A.scalar_tensor.default,
)

_BACKWARD = "a backward op: it appears only in training graphs, and graphprune exports in eval mode"
_BY_INDEX = "selects or writes elements by data-dependent indices, so which channel lands where depends on the data"
_POSITIONS = "returns positions along a dim (indices), whose values change when channels are removed"

FROZEN_BY_DESIGN = MappingProxyType({
    A.scatter.src: _BY_INDEX, A.scatter.value: _BY_INDEX, A.scatter_add.default: _BY_INDEX,
    A.scatter_reduce.two: _BY_INDEX, A.masked_scatter.default: _BY_INDEX, A.nonzero.default: _BY_INDEX,
    A.select_scatter.default: _BY_INDEX,
    A.argmax.default: _POSITIONS, A.argmin.default: _POSITIONS,
    A.resize_.default: "resizes a tensor in place to a given shape; its storage, not its channels, decides what is kept",
    A.as_strided.default: "addresses raw memory by strides; no channel dim can be read from it",
    A.diagonal.default: "takes a diagonal across two dims, mixing a channel dim with another",
    A.col2im.default: "folds channel x kernel-position blocks into an image: channels and positions mix",
    A.grid_sampler_2d.default: "samples at data-dependent positions (not followed yet)",
    A._cdist_forward.default: "pairwise distances sum over the feature dim",
    A._pdist_forward.default: "pairwise distances sum over the feature dim",
    A._fft_r2c.default: "a Fourier transform mixes every position along its dims",
    A._fft_c2r.default: "a Fourier transform mixes every position along its dims",
    A._embedding_bag.default: "sums embedding rows per bag with offsets (not followed yet)",
    A.native_dropout.default: "training-mode dropout: graphprune exports in eval mode, where dropout is the identity",
    A._local_scalar_dense.default: "reads one element as a Python number",
    A.sym_numel.default: "a dynamic-shape query: the export frontend keeps only the batch dim dynamic (sym_size)",
    A.sym_stride.int: "a dynamic-shape query: the export frontend keeps only the batch dim dynamic (sym_size)",
    A.sym_storage_offset.default: "a dynamic-shape query: the export frontend keeps only the batch dim dynamic",
    A.sym_is_contiguous.default: "a dynamic-shape query: the export frontend keeps only the batch dim dynamic",
    A.convolution_backward.default: _BACKWARD, A.native_layer_norm_backward.default: _BACKWARD,
    A.native_group_norm_backward.default: _BACKWARD, A.embedding_dense_backward.default: _BACKWARD,
    A.avg_pool2d_backward.default: _BACKWARD, A.max_pool2d_with_indices_backward.default: _BACKWARD,
    A._adaptive_avg_pool2d_backward.default: _BACKWARD,
})
"""Core ATen ops that deliberately have no rule, with the reason their channels are frozen."""


def aten_rules(gqa: GroupedQuery | str = GroupedQuery.KV_GROUPS) -> RuleTable:
    """The rule table for Core ATen graphs (a new immutable table each call); `gqa`: see GroupedQuery."""
    return RuleTable(functions=rules_by_op(gqa))


def ruled_ops() -> frozenset:
    """The OpOverloads `aten_rules()` has a rule for."""
    return frozenset(rules_by_op())


def rules_by_op(gqa: GroupedQuery | str = GroupedQuery.KV_GROUPS) -> dict:
    table: dict = {}

    def add(keys, rule: Rule) -> None:
        for key in keys:
            table[key] = rule

    table.update((op, rule) for op, rule in family_rules().items() if isinstance(op, torch._ops.OpOverload))
    add((A.matmul.default,), MatMulRule())  # bmm: moe.ExpertBmmRule (a matrix product unless it reads expert weights)
    add((A.scaled_dot_product_attention.default,), ScaledDotProductAttentionRule())
    add(UNARY, ElementwiseRule())
    add((A._softmax.default, A._log_softmax.default, A.softmax.int, A.log_softmax.int), NormaliseAlongRule())
    add(BROADCASTING, BinaryRule())
    for op, (dim_at, keepdim_at) in REDUCTIONS.items():
        table[op] = ReduceRule(dim_at, keepdim_at)
    for op in (A.mean.dim, A.sum.dim_IntList, A.linalg_vector_norm.default):  # may be normalising statistics
        table[op] = NormalisingStatisticRule(*REDUCTIONS[op])
    add((A.cumsum.default,), AlongDimRule("accumulates along the channel dim"))
    for op, spatial in SPATIAL.items():
        table[op] = SpatialRule(spatial)
    add((A.max_pool2d_with_indices.default,), PoolWithIndicesRule(2))
    add((A.max_pool3d_with_indices.default,), PoolWithIndicesRule(3))
    add((A.constant_pad_nd.default,), PadRule())
    add(MOVEMENT, MovementRule())
    add(ATEN_RESHAPES, ReshapeRule())
    add((A.expand.default,), RepeatKVRule(GroupedQuery.of(gqa)))
    add(SQUEEZES, SqueezeRule())
    add((A.slice_scatter.default,), SliceScatterRule())
    add((A.split_with_sizes.default, A.split.Tensor), SplitRule(as_aten_split))
    add((operator.getitem,), GetItemRule())
    add(CREATION, CreationRule())
    add((A.index_select.default,), AlongDimRule(_BY_INDEX))  # torch.roll decomposes to it
    add((A._assert_tensor_metadata.default,), MetadataAssertRule())
    add((A.sym_size.int,), ShapeQueryRule())  # the dynamic batch dim's size (frontends.dynamic_batch)
    table.update(moe_rules())  # routing by index, ranking over experts, grouped products over experts
    return table
