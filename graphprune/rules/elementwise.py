"""Rules for ops that keep channels where they are.

- `ElementwiseRule`: y[..., c, ...] depends only on x[..., c, ...] (activations, dropout, softmax
  over another dim, identity). The output channel dim is the input's.
- `SpatialRule`: acts on the trailing `spatial` dims only (pooling, upsampling); channels pass
  through if they are not among those dims.
- `ReduceRule`: mean/sum/amax over listed dims; channels pass through unless reduced.
- `BinaryRule`: broadcast element-wise arithmetic (residual add/sub, SE multiply, layer scale,
  position embeddings): every operand that spans the channel dim is tied to the output.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn

from ..groups import Coupling, Effect, Freeze, Role
from ..standins import dense_float, zeros_laid_out_as
from ..trace import TensorMeta
from .base import AnalysisContext, GraphView, Rule, describe_node, freeze_inputs
from .callsite import arg


def passthrough(node: fx.Node, ctx: AnalysisContext, x: fx.Node, out_dim: int | None) -> Effect:
    if out_dim is None:
        return Effect(None)
    return Effect(out_dim, couplings=(Coupling(ctx.input_slot(x, ctx.channel_dim(x)), ctx.output_slot(node, out_dim)),))


# torch's activation modules: a float tensor in, one of its shape, dtype and strides out (in place: the input itself)
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
                       nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.Mish, nn.Softplus)


class ElementwiseRule(Rule):
    """y = f(x) applied independently to every channel."""

    reads_values = False
    carries_heads = True  # a copy (clone in repeat_kv) on the way into attention

    def stand_in_past_stand_ins(self, op, args: tuple, kwargs: dict):
        """torch's activation modules, nn.Identity and an nn.Dropout in eval mode (which return their input) on one
        dense float tensor (standins.dense_float); their subclasses and everything else are computed."""
        if not isinstance(op, nn.Module) or len(args) != 1 or kwargs or not dense_float(args[0]):
            return None
        if type(op) is nn.Identity or (type(op) is nn.Dropout and not op.training):
            return args[0]
        if type(op) in _ACTIVATION_MODULES:
            return args[0] if getattr(op, "inplace", False) else torch.zeros_like(args[0])
        return None

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x = node.args[0] if node.args else next(iter(node.kwargs.values()))
        if not ctx.is_tensor(x) or not ctx.is_tensor(node) or ctx.shape(x) != ctx.shape(node):
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node, ctx.modules)} changes the shape"))
        d = ctx.channel_dim(x)
        return passthrough(node, ctx, x, d if isinstance(d, int) else None)


class NormaliseAlongRule(ElementwiseRule):
    """An op that normalises x along one dim (softmax and log_softmax: `dim` is argument 1; F.normalize(x, p, dim),
    the p-norm, argument 2, 1 when left out): element-wise across the channels unless it normalises over them,
    then pruned with its normalisation taken over the kept channels (valid, not exact, as LayerNorm)."""

    def __init__(self, dim_at: int = 1, default_dim: int | None = None):
        self.dim_at, self.default_dim = dim_at, default_dim

    def renormalises(self, node: fx.Node, view: GraphView) -> bool:
        x = node.args[0] if node.args else node.kwargs.get("input")
        d = view.channel_dim(x) if isinstance(x, fx.Node) else None
        dim = view.module(node).dim if node.op == "call_module" else arg(node, self.dim_at, "dim", self.default_dim)
        return isinstance(d, int) and isinstance(dim, int) and dim % len(view.shape(x)) == d


class SpatialRule(Rule):
    """Ops on the trailing `spatial` dims (pooling, upsample); for modules `spatial` is read from the input rank."""

    reads_values = False

    def __init__(self, spatial: int | None = None):
        self.spatial = spatial

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x = node.args[0] if node.args else node.kwargs.get("input")
        d = ctx.channel_dim(x)
        if not isinstance(d, int) or not ctx.is_tensor(node):
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node, ctx.modules)} output is not a tensor"))
        in_rank, out_rank = len(ctx.shape(x)), len(ctx.shape(node))
        spatial = self.spatial if self.spatial is not None else in_rank - 2
        if in_rank != out_rank or d >= in_rank - spatial or ctx.shape(x)[d] != ctx.shape(node)[d]:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node, ctx.modules)} acts on the channel dim"))
        return passthrough(node, ctx, x, d)


class PadRule(Rule):
    """F.pad(x, pad, mode, value) and aten.constant_pad_nd(x, pad, value): `pad` holds (before, after) amounts for
    the last dims, last dim first. Every padding mode pads each dim on its own: y[..., c, ...] reads x[..., c, ...]
    only (or the fill value) when the channel dim's amounts are (0, 0), a pad absent from `pad` included, so
    channels pass through exactly and nothing is rewritten (the amounts stay 0). Any other amount on the channel
    dim (a pad, a crop, a symbolic size) freezes them."""

    reads_values = False

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, pad = node.args[0], arg(node, 1, "pad")
        d = ctx.channel_dim(x)
        if not isinstance(d, int):
            return Effect(None)
        if _channel_pad(pad, len(ctx.shape(x)), d) != (0, 0):
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} pads the channel dim"))
        return passthrough(node, ctx, x, d)


def _channel_pad(pad, rank: int, d: int):
    """The (before, after) amounts `pad` gives dim `d` of a rank-`rank` tensor; None when `pad` is computed."""
    if isinstance(pad, fx.Node):
        return None
    at = 2 * (rank - 1 - d)
    return tuple(pad[at:at + 2]) if at < len(pad) else (0, 0)


class ReduceRule(Rule):
    """Reduction of x over the dims at argument `dim_at` (an int, a list, or empty/None for all dims):
    y keeps x's channel dim c (at c - #reduced dims before it without keepdim) unless c is reduced.

    mean/sum/amax/amin in both spellings (torch.mean(x, dim, keepdim), aten.mean.dim(x, dims, keepdim), ...);
    `dim_at`/`keepdim_at` are the positions of those arguments.
    """

    reads_values = False

    def __init__(self, dim_at: int | None = 1, keepdim_at: int | None = 2):
        self.dim_at, self.keepdim_at = dim_at, keepdim_at

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x = node.args[0]
        d = ctx.channel_dim(x)
        if not isinstance(d, int) or not ctx.is_tensor(node):
            return Effect(None)
        rank = len(ctx.shape(x))
        dims = arg(node, self.dim_at, "dim")
        dims = (dims,) if isinstance(dims, (int, fx.Node)) else tuple(dims or range(rank))
        if any(isinstance(v, fx.Node) for v in dims) or d in {r % rank for r in dims}:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} reduces over the channel dim"))
        dims = tuple(r % rank for r in dims)
        keepdim = arg(node, self.keepdim_at, "keepdim", False)
        return passthrough(node, ctx, x, d if keepdim else d - sum(1 for r in dims if r < d))


# a + b, a - b, a * b and a / b as fx traces them (`a += b` too: a Proxy has no in-place operators) and as torch functions
_ARITHMETIC = frozenset({operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
                         torch.div})


class BinaryRule(Rule):
    """Broadcast element-wise binary ops: operands aligned from the right share the output's channel dim."""

    reads_values = False
    carries_heads = True  # rotary embeddings (q * cos + rotate_half(q) * sin) on the way into attention

    def stand_in_past_stand_ins(self, op, args: tuple, kwargs: dict):
        """+, -, *, / (operators or torch functions, without keywords) of two dense float tensors
        (standins.dense_float) of one shape, dtype, device and strides, which broadcast nothing: zeros laid out as
        they are."""
        if op not in _ARITHMETIC or kwargs or len(args) != 2:
            return None
        a, b = args
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and (a.shape, a.dtype, a.device, a.stride()) == (b.shape, b.dtype, b.device, b.stride())):
            return None
        return zeros_laid_out_as(a)

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        if not ctx.is_tensor(node):
            return Effect(None)
        out_shape = ctx.shape(node)
        operands = [a for a in list(node.args) + list(node.kwargs.values()) if ctx.is_tensor(a)]
        # candidate output dims from operands whose producer declared a channel dim spanning the output
        candidates = set()
        only_constants = all(ctx.constant(a) is not None for a in operands)  # (w / sqrt(var + eps)): they decide
        for a in operands:
            d = ctx.channel_dim(a)
            if isinstance(d, int) and (ctx.constant(a) is None or only_constants):  # else constants follow
                aligned = d + len(out_shape) - len(ctx.shape(a))
                if ctx.shape(a)[d] == out_shape[aligned] and out_shape[aligned] > 1:
                    candidates.add(aligned)
        broadcast = []
        if len(candidates) > 1:
            candidates, broadcast = _main_dim(node, ctx, operands, candidates)
        if len(candidates) != 1:
            # several candidate dims, or none (a channel-carrying operand meets one whose channels
            # graphprune cannot follow, or broadcasts them away): nothing proves where channels go
            reason = (f"{describe_node(node)} combines tensors whose channels lie on different dims" if candidates
                      else f"{describe_node(node)} mixes channels with a tensor graphprune cannot follow")
            return Effect(None, freezes=freeze_inputs(node, ctx, reason))
        out_dim = candidates.pop()
        broadcast += [a for a in operands if a not in broadcast and _lands_elsewhere(ctx, a, out_dim, len(out_shape))]
        out = ctx.output_slot(node, out_dim)
        couplings = []
        freezes = tuple(_kept_whole(node, ctx, a, out_dim) for a in broadcast)
        for a in operands:
            if a in broadcast:
                continue
            shape = ctx.shape(a)
            local = out_dim - (len(out_shape) - len(shape))
            if local < 0 or shape[local] == 1:
                continue  # broadcast along the channel dim: this operand does not carry channels
            constant = ctx.constant(a)
            if constant is not None:  # a parameter or buffer read with get_attr: slice it too
                role = Role.PRODUCER if a.target in ctx.params else Role.BUFFER
                couplings.append(Coupling(out, ctx.param_slot(a.target, local, role)))
            else:
                couplings.append(Coupling(out, ctx.input_slot(a, local)))
        return Effect(out_dim, couplings=tuple(couplings), freezes=freezes)


def _lands_elsewhere(ctx: AnalysisContext, a: fx.Node, out_dim: int, out_rank: int) -> bool:
    """`a` has channels (a vector parameter's only dim: a per-head norm weight of size head_dim) that broadcasting
    puts on an output dim other than `out_dim`: the output's channels do not slice them."""
    d = ctx.channel_dim(a)
    return isinstance(d, int) and ctx.shape(a)[d] > 1 and d + out_rank - len(ctx.shape(a)) != out_dim


def _kept_whole(node: fx.Node, ctx: AnalysisContext, a: fx.Node, out_dim: int) -> Freeze:
    """y = x * a with a's channels broadcast over a dim of y that is not y's channel dim (`out_dim`): removing y's
    channels never removes a's, so a's are kept whole (they span the head_dim, which stays intact)."""
    d = ctx.channel_dim(a)
    on = d + len(ctx.shape(node)) - len(ctx.shape(a))
    return Freeze(ctx.input_slot(a, d), f"{describe_node(node)} broadcasts `{a.name}` (channels on dim {d}) over dim "
                                        f"{on} of its output, whose channels lie on dim {out_dim}: they are kept whole "
                                        "(e.g. a per-head norm weight or a rotary embedding over the head_dim, which "
                                        "stays intact)", kept_whole=True)


def _main_dim(node: fx.Node, ctx: AnalysisContext, operands: list, candidates: set) -> tuple[set, list]:
    """With channels on several dims: the dim of the operands as large as the output, and the broadcast
    operands (smaller than the output) whose channels lie elsewhere; unchanged when that is not one dim."""
    out_shape = ctx.shape(node)
    aligned = {a: ctx.channel_dim(a) + len(out_shape) - len(ctx.shape(a)) for a in operands
               if isinstance(ctx.channel_dim(a), int) and ctx.constant(a) is None}
    main = {d for a, d in aligned.items() if ctx.shape(a) == out_shape and d in candidates}
    if len(main) != 1:
        return candidates, []
    broadcast = [a for a, d in aligned.items() if d not in main and ctx.shape(a) != out_shape]
    if len(broadcast) + sum(1 for a, d in aligned.items() if d in main) != len(aligned):
        return candidates, []
    return main, broadcast


class ShapeQueryRule(Rule):
    """x.size(), x.shape, x.dim(): read metadata, produce no tensor, tie nothing."""

    reads_values = False

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        if isinstance(ctx.value(node), TensorMeta):
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} has no rule"))
        return Effect(None)
