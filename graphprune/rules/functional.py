"""Rules for the functional spellings of layers, as library modules write them (fx frontend).

A module that calls `F.batch_norm(x, self.running_mean, ...)` or `F.conv2d(x, self.weight, ...)`
is traced through: its parameters are `get_attr` nodes passed as arguments. A 1-D parameter
is already declared by the analysis (its dim 0 carries channels, coupled to its slot), so
an argument's channels are reached through the node (`input_slot(arg, 0)`); a computed
argument (`(gain * scale).view(-1)`) is followed the same way, and freezes when its channel
dim is not the one the op reads.

- batch_norm(x, mean, var, w, b, training, momentum, eps) and instance_norm (same order):
  y[:, c] = (x[:, c] - m[c]) w[c] / sqrt(v[c] + eps) + b[c], with m, v the running statistics
  or statistics of x[:, c] itself (training, instance norm): per channel on dim 1 either way.
- group_norm(x, G, w, b, eps): the C/G channels of one group are normalised together, so
  whole groups are pruned; `shrink` rewrites G = kept / (C/G).
- conv1d/2d/3d(x, w, b, stride, padding, dilation, groups): as nn.Conv (rules/layers.py),
  with the weight's dims read through `weight_slot` (a parameter, or a computed weight
  whose channels are followed or frozen); `shrink` rewrites `groups`.
- roll(x, shifts, dims): a cyclic shift along `dims`; channels pass through unless the
  channel dim is shifted (or `dims` is None: the flattened tensor is rolled), then frozen.
"""
from __future__ import annotations

import math

import numpy as np
import torch.fx as fx

from ..groups import Coupling, Effect, Role, Slot
from .aten_layers import conv_input_couplings, weight_slot
from .base import AnalysisContext, GraphView, LayerKind, MacTerm, Rule, ShrinkContext, WeightedLayer, describe_node
from .base import freeze_inputs
from .movement import MovementRule


def _arg(node: fx.Node, position: int, name: str, default=None):
    return node.args[position] if len(node.args) > position else node.kwargs.get(name, default)


def _set_arg(node: fx.Node, position: int, name: str, value) -> None:
    """Set an argument where the call site passed it (positionally or by keyword)."""
    if len(node.args) > position:
        args = list(node.args)
        args[position] = value
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, name: value}


def _per_channel(node: fx.Node, ctx: AnalysisContext, x_slot: Slot, out: Slot, tensors) -> list[Coupling]:
    """x and y share channels; every per-channel tensor argument (dim 0) is tied to them."""
    couplings = [Coupling(x_slot, out)]
    for position, name in tensors:
        t = _arg(node, position, name)
        if isinstance(t, fx.Node):
            couplings.append(Coupling(out, ctx.input_slot(t, 0)))
    return couplings


class FunctionalBatchNormRule(Rule):
    """F.batch_norm / F.instance_norm: per channel on dim 1, running stats, weight and bias sliced with it."""

    TENSORS = ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x = node.args[0]
        x_slot, out = ctx.input_slot(x, 1), ctx.output_slot(node, 1)
        return Effect(1, couplings=tuple(_per_channel(node, ctx, x_slot, out, self.TENSORS)))


class FunctionalGroupNormRule(Rule):
    """F.group_norm(x, G, w, b, eps): channels c and c' go together when c // (C/G) == c' // (C/G)."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, groups = node.args[0], _arg(node, 1, "num_groups")
        x_slot, out = ctx.input_slot(x, 1), ctx.output_slot(node, 1)
        channels = ctx.shape(x)[1]
        width = channels // groups
        c = np.arange(channels)
        couplings = _per_channel(node, ctx, x_slot, out, ((2, "weight"), (3, "bias")))
        couplings.append(Coupling(out, out, c, (c // width) * width))
        return Effect(1, couplings=tuple(couplings))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        kept = ctx.kept(node.name, 1)
        if kept is not None:
            width = ctx.value(node).shape[1] // _arg(node, 1, "num_groups")
            _set_arg(node, 1, "num_groups", len(kept) // width)


class FunctionalConvRule(Rule):
    """F.conv1d/2d/3d(x, w, b, stride, padding, dilation, groups): w is (Cout, Cin/G, k...), see the module docstring."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, w, b = node.args[0], _arg(node, 1, "weight"), _arg(node, 2, "bias")
        groups = _arg(node, 6, "groups", 1)
        cdim = len(ctx.shape(x)) - (len(ctx.shape(w)) - 2) - 1
        x_slot, out = ctx.input_slot(x, cdim), ctx.output_slot(node, cdim)
        couplings = [Coupling(out, weight_slot(ctx, w, 0, Role.PRODUCER))]
        if isinstance(b, fx.Node):
            couplings.append(Coupling(out, weight_slot(ctx, b, 0, Role.PRODUCER)))
        couplings += conv_input_couplings(ctx, x_slot, out, w, ctx.shape(x)[cdim], ctx.shape(node)[cdim], groups)
        return Effect(cdim, couplings=tuple(couplings))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        x, w = node.args[0], _arg(node, 1, "weight")
        if _arg(node, 6, "groups", 1) == 1:
            return
        cdim = len(ctx.value(x).shape) - (len(ctx.value(w).shape) - 2) - 1
        kept = ctx.kept(x.name, cdim)
        if kept is not None:  # the group width Cin/G (the weight's dim 1) is unchanged by pruning
            _set_arg(node, 6, "groups", len(kept) // ctx.value(w).shape[1])

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        """numel(y) * prod(w.shape[1:]); scales with y's channels, and with x's when G == 1."""
        x, w = node.args[0], _arg(node, 1, "weight")
        nodes = (node, x) if _arg(node, 6, "groups", 1) == 1 else (node,)
        factors = tuple(Slot(n.name, view.channel_dim(n)) for n in nodes if isinstance(view.channel_dim(n), int))
        return (MacTerm(math.prod(view.shape(node)) * math.prod(view.shape(w)[1:]), factors),)

    def weighted_layer(self, node: fx.Node, view: GraphView) -> WeightedLayer | None:
        w = _arg(node, 1, "weight")
        if view.constant(w) is None:
            return None
        kind = LayerKind.DENSE_CONV if _arg(node, 6, "groups", 1) == 1 else LayerKind.GROUPED_CONV
        return WeightedLayer(kind, (w.target,))


class RollRule(MovementRule):
    """torch.roll(x, shifts, dims): label-pushed when the channel dim is not shifted, else frozen."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, dims = node.args[0], _arg(node, 2, "dims")
        d = ctx.channel_dim(x)
        if isinstance(d, int):
            rank = len(ctx.shape(x))
            rolled = None if dims is None else {r % rank for r in ((dims,) if isinstance(dims, int) else dims)}
            if rolled is None or d in rolled:
                reason = f"{describe_node(node)} shifts the channel dim (or the flattened tensor)"
                return Effect(None, freezes=freeze_inputs(node, ctx, reason))
        return super().couple(node, ctx)
