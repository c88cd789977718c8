"""Rules for layers with weights: convolutions, linear layers and normalisation layers.

Convolution with G groups, Cin inputs, Cout outputs (k_in = Cin/G, k_out = Cout/G):
  - G == 1: input channel i is column i of the weight (dim 1); output o is row o (dim 0).
  - depthwise (k_in == 1): input channel g feeds outputs g*k_out .. g*k_out + k_out - 1,
    so they are one channel; `groups` becomes the number of kept inputs.
  - grouped (k_in > 1): a group's inputs and outputs go together; whole groups are
    pruned and the group width k_in stays, so `groups` = kept inputs / k_in.
"""
from __future__ import annotations

import math

import numpy as np
import torch.fx as fx

from ..groups import Coupling, Effect, Freeze, Role, Slot
from .base import AnalysisContext, GraphView, LayerKind, MacTerm, Rule, ShrinkContext, WeightedLayer


def _channel_dim(ctx: AnalysisContext, x: fx.Node, spatial_dims: int) -> int:
    return len(ctx.shape(x)) - spatial_dims - 1


def _producer_couplings(ctx, node, out, attrs=("weight", "bias"), dim=0, role=Role.PRODUCER):
    couplings = []
    for attr in attrs:
        slot = ctx.module_param_slot(node, attr, dim, role)
        if slot is not None:
            couplings.append(Coupling(out, slot))
    return couplings


class ConvRule(Rule):
    """nn.Conv1d/2d/3d, plain, grouped and depthwise (see the module docstring)."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        m = ctx.module(node)
        x = node.args[0]
        cdim = _channel_dim(ctx, x, len(m.kernel_size))
        x_slot, out = ctx.input_slot(x, cdim), ctx.output_slot(node, cdim)
        couplings = _producer_couplings(ctx, node, out)
        groups, k_in, k_out = m.groups, m.in_channels // m.groups, m.out_channels // m.groups
        if groups == 1:
            couplings.append(Coupling(x_slot, ctx.module_param_slot(node, "weight", 1, Role.CONSUMER)))
        elif k_in == 1:
            o = np.arange(m.out_channels)
            couplings.append(Coupling(x_slot, out, o // k_out, o))
        else:
            i, o = np.arange(m.in_channels), np.arange(m.out_channels)
            couplings.append(Coupling(x_slot, out, i, (i // k_in) * k_out))
            couplings.append(Coupling(out, out, o, (o // k_out) * k_out))
        return Effect(out_dim=cdim, couplings=tuple(couplings))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        m = ctx.module(node)
        x = node.args[0]
        cdim = len(ctx.value(x).shape) - len(m.kernel_size) - 1
        kept_in = ctx.kept(x.name, cdim)
        in_channels = len(kept_in) if kept_in is not None else m.in_channels
        m.out_channels = m.weight.shape[0]
        m.groups = in_channels // m.weight.shape[1]
        m.in_channels = in_channels

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        """numel(y) * (C_in / G) * prod(k): rows of the weight always scale it, its columns only when G == 1."""
        m = view.module(node)
        weight = f"{node.target}.weight"
        factors = (Slot(weight, 0, Role.PRODUCER),) + ((Slot(weight, 1, Role.CONSUMER),) if m.groups == 1 else ())
        return (MacTerm(math.prod(view.shape(node)) * (m.in_channels // m.groups) * math.prod(m.kernel_size), factors),)

    def weighted_layer(self, node: fx.Node, view: GraphView) -> WeightedLayer:
        kind = LayerKind.DENSE_CONV if view.module(node).groups == 1 else LayerKind.GROUPED_CONV
        return WeightedLayer(kind, (f"{node.target}.weight",))


class ConvTransposeRule(Rule):
    """nn.ConvTranspose1d/2d/3d with groups == 1: weight is (Cin, Cout, k...); grouped ones are frozen."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        m = ctx.module(node)
        x = node.args[0]
        cdim = _channel_dim(ctx, x, len(m.kernel_size))
        x_slot, out = ctx.input_slot(x, cdim), ctx.output_slot(node, cdim)
        if m.groups != 1:
            reason = f"grouped ConvTranspose `{node.target}` (groups={m.groups}) is not supported"
            return Effect(cdim, freezes=(Freeze(x_slot, reason), Freeze(out, reason)))
        couplings = [Coupling(x_slot, ctx.module_param_slot(node, "weight", 0, Role.CONSUMER)),
                     Coupling(out, ctx.module_param_slot(node, "weight", 1, Role.PRODUCER))]
        bias = ctx.module_param_slot(node, "bias", 0, Role.PRODUCER)
        if bias is not None:
            couplings.append(Coupling(out, bias))
        return Effect(out_dim=cdim, couplings=tuple(couplings))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        m = ctx.module(node)
        m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1]

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        """numel(x) * (C_out / G) * prod(k): every input position scatters into C_out / G outputs per kernel tap."""
        m = view.module(node)
        weight = f"{node.target}.weight"
        macs = math.prod(view.shape(node.args[0])) * (m.out_channels // m.groups) * math.prod(m.kernel_size)
        return (MacTerm(macs, (Slot(weight, 0, Role.CONSUMER), Slot(weight, 1, Role.PRODUCER))),)

    def weighted_layer(self, node: fx.Node, view: GraphView) -> WeightedLayer:
        kind = LayerKind.DENSE_CONV if view.module(node).groups == 1 else LayerKind.GROUPED_CONV
        return WeightedLayer(kind, (f"{node.target}.weight",))


class LinearRule(Rule):
    """nn.Linear on the last dim: input feature j is weight column j, output i is row i."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x = node.args[0]
        cdim = len(ctx.shape(x)) - 1
        x_slot, out = ctx.input_slot(x, cdim), ctx.output_slot(node, cdim)
        couplings = _producer_couplings(ctx, node, out)
        couplings.append(Coupling(x_slot, ctx.module_param_slot(node, "weight", 1, Role.CONSUMER)))
        return Effect(out_dim=cdim, couplings=tuple(couplings))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        m = ctx.module(node)
        m.out_features, m.in_features = m.weight.shape

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        """numel(y) * in_features: scales with the rows and the columns of the weight."""
        weight = f"{node.target}.weight"
        macs = math.prod(view.shape(node)) * view.module(node).in_features
        return (MacTerm(macs, (Slot(weight, 0, Role.PRODUCER), Slot(weight, 1, Role.CONSUMER))),)

    def weighted_layer(self, node: fx.Node, view: GraphView) -> WeightedLayer:
        return WeightedLayer(LayerKind.LINEAR, (f"{node.target}.weight",))


class BatchNormRule(Rule):
    """nn.BatchNorm1d/2d/3d: per-channel affine parameters and running statistics on dim 1."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x = node.args[0]
        x_slot, out = ctx.input_slot(x, 1), ctx.output_slot(node, 1)
        couplings = [Coupling(x_slot, out)]
        couplings += _producer_couplings(ctx, node, out)
        couplings += _producer_couplings(ctx, node, out, ("running_mean", "running_var"), role=Role.BUFFER)
        return Effect(out_dim=1, couplings=tuple(couplings))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        m = ctx.module(node)
        kept = ctx.kept(node.name, 1)
        if kept is not None:
            m.num_features = len(kept)


class LayerNormRule(Rule):
    """nn.LayerNorm over the last dim only (the channel dim); normalises over it, so pruning is not exact."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        m = ctx.module(node)
        x = node.args[0]
        cdim = len(ctx.shape(x)) - 1
        x_slot, out = ctx.input_slot(x, cdim), ctx.output_slot(node, cdim)
        if len(m.normalized_shape) != 1:
            reason = f"LayerNorm `{node.target}` normalises over {len(m.normalized_shape)} dims"
            return Effect(cdim, freezes=(Freeze(x_slot, reason), Freeze(out, reason)))
        couplings = [Coupling(x_slot, out)] + _producer_couplings(ctx, node, out)
        return Effect(out_dim=cdim, couplings=tuple(couplings))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        m = ctx.module(node)
        kept = ctx.kept(node.name, len(ctx.value(node).shape) - 1)
        if kept is not None:
            m.normalized_shape = (len(kept),)


class GroupNormRule(Rule):
    """nn.GroupNorm: the channels of one normalisation group go together; whole groups are pruned."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        m = ctx.module(node)
        x = node.args[0]
        x_slot, out = ctx.input_slot(x, 1), ctx.output_slot(node, 1)
        width = m.num_channels // m.num_groups
        c = np.arange(m.num_channels)
        couplings = [Coupling(x_slot, out), Coupling(out, out, c, (c // width) * width)]
        couplings += _producer_couplings(ctx, node, out)
        return Effect(out_dim=1, couplings=tuple(couplings))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        m = ctx.module(node)
        kept = ctx.kept(node.name, 1)
        if kept is not None:
            width = m.num_channels // m.num_groups
            m.num_channels, m.num_groups = len(kept), len(kept) // width


class FunctionalLayerNormRule(Rule):
    """F.layer_norm(x, (C,), weight, bias) over the last dim, as written inside custom norm modules."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, shape = node.args[0], node.args[1]
        cdim = len(ctx.shape(x)) - 1
        x_slot, out = ctx.input_slot(x, cdim), ctx.output_slot(node, cdim)
        if len(shape) != 1:
            reason = f"layer_norm `{node.name}` normalises over {len(shape)} dims"
            return Effect(cdim, freezes=(Freeze(x_slot, reason), Freeze(out, reason)))
        couplings = [Coupling(x_slot, out)]
        affine = [node.args[i] if len(node.args) > i else node.kwargs.get(name) for i, name in ((2, "weight"), (3, "bias"))]
        for a in affine:
            if isinstance(a, fx.Node):
                couplings.append(Coupling(out, ctx.param_slot(a.target, 0, Role.PRODUCER) if ctx.constant(a) is not None
                                          else ctx.input_slot(a, 0)))
        return Effect(out_dim=cdim, couplings=tuple(couplings))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        kept = ctx.kept(node.name, len(ctx.value(node).shape) - 1)
        if kept is not None:
            node.args = (node.args[0], (len(kept),)) + tuple(node.args[2:])
