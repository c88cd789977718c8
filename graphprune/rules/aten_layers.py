"""Rules for Core ATen ops with weights: convolution, linear/addmm/mm, norms, embedding, attention.

In an exported graph a parameter is a `get_attr` node argument (not a module), so slots
are `Slot(qualified name, dim, role)` of that node's target. Several ops return a tuple
(output, saved statistics...); their channels are tied to the `getitem(node, 0)` users.

- convolution(x, w, b, stride, pad, dil, transposed, out_pad, G): as nn.Conv (see
  rules/layers.py): w is (Cout, Cin/G, k...); input i is column i (G == 1), depthwise
  input g feeds outputs g*k_out.., grouped convs keep whole groups. Transposed (G == 1):
  w is (Cin, Cout, k...). `shrink` rewrites G = kept inputs / (Cin/G).
- linear(x, w, b) = x w^T + b; addmm(b, a, W) = b + a W; mm(a, W) = a W, where W may be a
  parameter or its transpose (t/permute/transpose of a get_attr): a's last dim ~ the
  contracted dim of the parameter (CONSUMER), the output's last dim ~ its other dim and b.
- _native_batch_norm_legit*(x, w, b, mean, var, ...): y[:, c] = (x[:, c] - mean[c]) w[c] / sqrt(var[c] + eps) + b[c].
- native_layer_norm(x, [C], w, b, eps): normalises over the last dim (pruning it changes the
  statistics: valid, not exact); `shrink` rewrites [C].
- native_group_norm(x, w, b, N, C, HxW, G, eps): channels of one of the G groups go together;
  `shrink` rewrites C and G.
- embedding(W, ids): y[..., d] = W[ids, d]: the output's last dim is W's dim 1.
- scaled_dot_product_attention(q, k, v, mask, p, causal, scale, gqa): whole heads (dim -3);
  with grouped-query attention query head h reads key/value head h // (Hq / Hkv).
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.fx as fx

from ..groups import Coupling, Effect, Freeze, Role, Slot
from .attention import MatMulRule, ScaledDotProductAttentionRule
from .base import (AnalysisContext, GraphView, LayerKind, MacTerm, Rule, ShrinkContext, WeightedLayer, describe_node,
                   freeze_inputs)

_A = torch.ops.aten
_TRANSPOSES = (_A.t.default, _A.permute.default, _A.transpose.int)


def weight_slot(ctx: AnalysisContext, w: fx.Node, dim: int, role: Role) -> Slot:
    """Slot of dim `dim` of a weight operand: its parameter when `w` reads one, else the input tensor.

    A vector constant's only non-trivial dim is already declared by the analysis (coupled
    to its parameter slot as PRODUCER or BUFFER); that dim is reached through the node. A
    dim read in two roles (a tied embedding and output layer) gets tied slots (param_slot).
    """
    if ctx.constant(w) is None or ctx.channel_dim(w) == dim:
        return ctx.input_slot(w, dim)
    return ctx.param_slot(w.target, dim, role)


def _arg(node: fx.Node, position: int, name: str, default=None):
    return node.args[position] if len(node.args) > position else node.kwargs.get(name, default)


def _with_arg(node: fx.Node, position: int, value) -> None:
    args = list(node.args)
    args[position] = value
    node.args = tuple(args)


def _first_outputs(node: fx.Node, ctx: AnalysisContext, dim: int, source: Slot) -> tuple[list, list]:
    """Couplings from `source` to dim `dim` of every `getitem(node, 0)`; a tuple used whole freezes `source`."""
    users = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
    couplings = [Coupling(source, ctx.output_slot(u, dim)) for u in users]
    whole = [u for u in node.users if u.target is not operator.getitem]
    freezes = [Freeze(source, f"the outputs of {describe_node(node)} are used whole")] if whole else []
    return couplings, freezes


def _channel_factors(view: GraphView, *nodes: fx.Node) -> tuple[Slot, ...]:
    """The activation slots (node, its declared channel dim) that a MAC count scales with."""
    return tuple(Slot(n.name, view.channel_dim(n)) for n in nodes if isinstance(view.channel_dim(n), int))


def _kept_count(ctx: ShrinkContext, node: fx.Node, dim: int) -> int | None:
    kept = ctx.kept(node.name, dim)
    return None if kept is None else len(kept)


def conv_input_couplings(ctx: AnalysisContext, x_slot: Slot, out: Slot, w: fx.Node, c_in: int, c_out: int,
                         groups: int) -> list[Coupling]:
    """How a convolution's input channels tie: to the weight's input dim (groups == 1); each input to its
    outputs (depthwise, k_in == 1); else whole groups (input group g ~ output group g, outputs of a group tied)."""
    k_in, k_out = c_in // groups, c_out // groups
    if groups == 1:
        return [Coupling(x_slot, weight_slot(ctx, w, 1, Role.CONSUMER))]
    if k_in == 1:
        o = np.arange(c_out)
        return [Coupling(x_slot, out, o // k_out, o)]
    i, o = np.arange(c_in), np.arange(c_out)
    return [Coupling(x_slot, out, i, (i // k_in) * k_out), Coupling(out, out, o, (o // k_out) * k_out)]


class ConvolutionRule(Rule):
    """aten.convolution: plain, grouped, depthwise and transposed with groups == 1 (module docstring)."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, w, b = node.args[:3]
        transposed, groups = node.args[6], node.args[8]
        cdim = len(ctx.shape(x)) - len(node.args[3]) - 1
        x_slot, out = ctx.input_slot(x, cdim), ctx.output_slot(node, cdim)
        bias = [Coupling(out, weight_slot(ctx, b, 0, Role.PRODUCER))] if isinstance(b, fx.Node) else []
        if transposed:
            if groups != 1:
                reason = f"grouped transposed convolution {describe_node(node)} (groups={groups}) is not supported"
                return Effect(cdim, freezes=(Freeze(x_slot, reason), Freeze(out, reason)))
            return Effect(cdim, couplings=(Coupling(x_slot, weight_slot(ctx, w, 0, Role.CONSUMER)),
                                           Coupling(out, weight_slot(ctx, w, 1, Role.PRODUCER)), *bias))
        couplings = [Coupling(out, weight_slot(ctx, w, 0, Role.PRODUCER)), *bias]
        couplings += conv_input_couplings(ctx, x_slot, out, w, ctx.shape(x)[cdim], ctx.shape(node)[cdim], groups)
        return Effect(cdim, couplings=tuple(couplings))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        x, w = node.args[:2]
        groups = node.args[8]
        if node.args[6] or groups == 1:
            return
        cdim = len(ctx.value(x).shape) - len(node.args[3]) - 1
        kept = _kept_count(ctx, x, cdim)
        if kept is not None:
            _with_arg(node, 8, kept // ctx.value(w).shape[1])  # group width Cin/G is unchanged by pruning

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        """numel(y) * prod(w.shape[1:]) (= numel(y) * Cin/G * prod(k)); transposed: numel(x) * prod(w.shape[1:]).

        Scales with the output's channels, and with the input's when G == 1 (transposed: both).
        """
        x, w = node.args[:2]
        transposed, groups = node.args[6], node.args[8]
        taps = math.prod(view.shape(w)[1:])
        if transposed:
            return (MacTerm(math.prod(view.shape(x)) * taps, _channel_factors(view, x, node)),)
        factors = _channel_factors(view, node, x) if groups == 1 else _channel_factors(view, node)
        return (MacTerm(math.prod(view.shape(node)) * taps, factors),)

    def weighted_layer(self, node: fx.Node, view: GraphView) -> WeightedLayer | None:
        w = node.args[1]
        if view.constant(w) is None:
            return None
        return WeightedLayer(LayerKind.DENSE_CONV if node.args[8] == 1 else LayerKind.GROUPED_CONV, (w.target,))


def _transposed_param(ctx: AnalysisContext, w: fx.Node) -> tuple[fx.Node, bool] | None:
    """(get_attr node, transposed?) when a 2-D matrix operand is a parameter or its transpose."""
    if ctx.constant(w) is not None and len(ctx.shape(w)) == 2:
        return w, False
    if w.op == "call_function" and w.target in _TRANSPOSES and isinstance(w.args[0], fx.Node):
        src = w.args[0]
        if ctx.constant(src) is not None and len(ctx.shape(src)) == 2:
            return src, True
    return None


def _linear_couplings(ctx, x: fx.Node, out: Slot, w: fx.Node, w_in: int, bias) -> list[Coupling]:
    """x's last dim ~ parameter dim `w_in` (CONSUMER); the output ~ the other dim (PRODUCER) and the bias."""
    x_slot = ctx.input_slot(x, len(ctx.shape(x)) - 1)
    couplings = [Coupling(x_slot, weight_slot(ctx, w, w_in, Role.CONSUMER)),
                 Coupling(out, weight_slot(ctx, w, 1 - w_in, Role.PRODUCER))]
    if isinstance(bias, fx.Node):
        shape = ctx.shape(bias)
        if shape and shape[-1] > 1:
            couplings.append(Coupling(out, weight_slot(ctx, bias, len(shape) - 1, Role.PRODUCER)))
    return couplings


class LinearRule(Rule):
    """aten.linear(x, w, b) = x w^T + b on the last dim."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, w = node.args[:2]
        b = _arg(node, 2, "bias")
        cdim = len(ctx.shape(node)) - 1
        if ctx.constant(w) is None:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} has a computed weight"))
        return Effect(cdim, couplings=tuple(_linear_couplings(ctx, x, ctx.output_slot(node, cdim), w, 1, b)))

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        """numel(y) * in_features; scales with the output's and the input's last dims."""
        x, w = node.args[:2]
        return (MacTerm(math.prod(view.shape(node)) * view.shape(w)[-1], _channel_factors(view, node, x)),)

    def weighted_layer(self, node: fx.Node, view: GraphView) -> WeightedLayer | None:
        w = node.args[1]
        return WeightedLayer(LayerKind.LINEAR, (w.target,)) if view.constant(w) is not None else None


class MmRule(MatMulRule):
    """mm(a, W) and addmm(b, a, W, beta, alpha) = beta b + alpha a W: a linear layer when W is a parameter
    (or its transpose); mm of two activations is a matrix product (MatMulRule); addmm of two is frozen."""

    reads_heads = False

    def __init__(self, has_bias: bool):
        self.has_bias = has_bias

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        bias, a, w = (node.args[0], node.args[1], node.args[2]) if self.has_bias else (None, *node.args[:2])
        param = _transposed_param(ctx, w)
        if param is None:
            if self.has_bias:
                return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} multiplies two activations"))
            return super().couple(node, ctx)
        weight, transposed = param
        out = ctx.output_slot(node, 1)
        return Effect(1, couplings=tuple(_linear_couplings(ctx, a, out, weight, 1 if transposed else 0, bias)))

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        """numel(y) * k for a (n, k) @ W (k, m); scales with the output's and a's declared channel dims."""
        a = node.args[1] if self.has_bias else node.args[0]
        factors = _channel_factors(view, node) + (
            _channel_factors(view, a) if view.channel_dim(a) == len(view.shape(a)) - 1 else ())
        return (MacTerm(math.prod(view.shape(node)) * view.shape(a)[-1], factors),)

    def weighted_layer(self, node: fx.Node, view: GraphView) -> WeightedLayer | None:
        w = node.args[2] if self.has_bias else node.args[1]
        if w.op == "call_function" and w.target in _TRANSPOSES:
            w = w.args[0]
        return WeightedLayer(LayerKind.LINEAR, (w.target,)) if view.constant(w) is not None else None


class BatchNormRule(Rule):
    """_native_batch_norm_legit(_no_training)(x, w, b, running_mean, running_var, ...): per-channel affine on dim 1.

    `stats`: the overload has running statistics (args 3 and 4; `no_stats` has none).
    """

    def __init__(self, stats: bool = True):
        self.stats = stats

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x = node.args[0]
        x_slot = ctx.input_slot(x, 1)
        couplings, freezes = _first_outputs(node, ctx, 1, x_slot)
        roles = [(1, Role.PRODUCER), (2, Role.PRODUCER)] + ([(3, Role.BUFFER), (4, Role.BUFFER)] if self.stats else [])
        for position, role in roles:
            t = node.args[position]
            if isinstance(t, fx.Node):
                couplings.append(Coupling(x_slot, weight_slot(ctx, t, 0, role)))
        return Effect((1, None, None), couplings=tuple(couplings), freezes=tuple(freezes))


class LayerNormRule(Rule):
    """native_layer_norm(x, [C], w, b, eps) over the last dim only; `shrink` rewrites [C]."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, shape = node.args[:2]
        cdim = len(ctx.shape(x)) - 1
        x_slot = ctx.input_slot(x, cdim)
        if len(shape) != 1:
            reason = f"{describe_node(node)} normalises over {len(shape)} dims"
            return Effect((None, None, None), freezes=(Freeze(x_slot, reason),))
        couplings, freezes = _first_outputs(node, ctx, cdim, x_slot)
        for t in node.args[2:4]:
            if isinstance(t, fx.Node):
                couplings.append(Coupling(x_slot, weight_slot(ctx, t, 0, Role.PRODUCER)))
        return Effect((cdim, None, None), couplings=tuple(couplings), freezes=tuple(freezes))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        x = node.args[0]
        kept = _kept_count(ctx, x, len(ctx.value(x).shape) - 1)
        if kept is not None and len(node.args[1]) == 1:
            _with_arg(node, 1, [kept])


class GroupNormRule(Rule):
    """native_group_norm(x, w, b, N, C, HxW, G, eps): channels c and c' go together when c // (C/G) == c' // (C/G)."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, w, b = node.args[:3]
        channels, groups = node.args[4], node.args[6]
        x_slot = ctx.input_slot(x, 1)
        width = channels // groups
        c = np.arange(channels)
        couplings, freezes = _first_outputs(node, ctx, 1, x_slot)
        couplings.append(Coupling(x_slot, x_slot, c, (c // width) * width))
        for t in (w, b):
            if isinstance(t, fx.Node):
                couplings.append(Coupling(x_slot, weight_slot(ctx, t, 0, Role.PRODUCER)))
        return Effect((1, None, None), couplings=tuple(couplings), freezes=tuple(freezes))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        kept = _kept_count(ctx, node.args[0], 1)
        if kept is not None:
            width = node.args[4] // node.args[6]
            _with_arg(node, 4, kept)
            _with_arg(node, 6, kept // width)


class EmbeddingRule(Rule):
    """embedding(W, ids, ...): the output's last dim is W's dim 1. `ids` are read by value (a row index each),
    so channels `ids` carries (a position_ids buffer) are frozen: removing one would change which rows are read."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        w, ids = node.args[:2]
        cdim = len(ctx.shape(node)) - 1
        if ctx.constant(w) is None:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} has a computed table"))
        freezes = ()
        if isinstance(ctx.channel_dim(ids), int):
            freezes = (Freeze(ctx.input_slot(ids, ctx.channel_dim(ids)), f"{describe_node(node)} reads `{ids.name}` "
                              "as row indices: removing one would change which rows are read"),)
        return Effect(cdim, couplings=(Coupling(ctx.output_slot(node, cdim), weight_slot(ctx, w, 1, Role.PRODUCER)),),
                      freezes=freezes)


class AttentionRule(ScaledDotProductAttentionRule):
    """aten.scaled_dot_product_attention: whole heads; masks that broadcast over heads; grouped-query attention."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        q, k, v = node.args[:3]
        mask = _arg(node, 3, "attn_mask")
        rank = len(ctx.shape(q))
        hd = rank - 3
        if not isinstance(mask, fx.Node):
            if {ctx.channel_dim(t) for t in (q, k, v)} != {hd} or ctx.shape(k)[hd] == ctx.shape(q)[hd]:
                return super().couple(node, ctx)
        elif ctx.channel_dim(mask) is not None or _mask_head_size(ctx.shape(mask), rank) > 1:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} has a mask per head"))
        if any(ctx.channel_dim(t) not in (hd, None) for t in (q, k, v)):
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} has channels inside heads"))
        hq, hk = ctx.shape(q)[hd], ctx.shape(k)[hd]
        if hk == 0 or hq % hk or ctx.shape(v)[hd] != hk:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)}: {hq} query heads, {hk} kv heads"))
        out = ctx.output_slot(node, hd)
        h = np.arange(hq)
        couplings = [Coupling(ctx.input_slot(q, hd), out)]
        couplings += [Coupling(out, ctx.input_slot(t, hd), h, h // (hq // hk)) for t in dict.fromkeys((k, v))]
        return Effect(hd, couplings=tuple(couplings))


def _mask_head_size(shape: tuple, rank: int) -> int:
    """The size of a mask's heads dim (dim -3 of the query), 1 when it broadcasts over heads."""
    return shape[len(shape) - 3] if len(shape) >= 3 else 1

