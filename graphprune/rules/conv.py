"""Convolution, in every spelling: nn.Conv*/nn.ConvTranspose* modules, F.conv*d / F.conv_transpose*d and
aten.convolution. Each spelling is read into one `ConvCall`; the rule below is the only place the maths lives.

A convolution with G groups, Cin inputs, Cout outputs (k_in = Cin/G, k_out = Cout/G), weight
(Cout, k_in, k...):
  - G == 1: input channel i is column i of the weight (dim 1); output o is row o (dim 0).
  - depthwise (k_in == 1): input channel g feeds outputs g*k_out .. g*k_out + k_out - 1,
    so they are one channel; G becomes the number of kept inputs.
  - grouped (k_in > 1), `GroupedConv.WITHIN` (the default): every group keeps its place and
    the same channels inside it: input g*k_in + j is weight column j, so inputs j of all groups
    go together, as do outputs o of all groups (g*k_out + o); G stays, k_in and k_out shrink.
  - grouped, `GroupedConv.WHOLE`: a group's inputs and outputs go together; whole groups are
    pruned and the group width k_in stays, so G' = kept inputs / k_in = G * Cout' / Cout.
  - transposed (weight (Cin, Cout/G, k...)): pruned with G == 1 only; grouped ones freeze.
MACs: numel(y) * k_in * prod(k) (transposed: numel(x) * Cout/G * prod(k)); they scale with the
output's channels, and with the input's when its channels are not the output's (G == 1, grouped
within groups; transposed: both).
"""
from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.conv import _ConvNd

from ..errors import InputError
from ..groups import Coupling, Effect, Freeze, Role, Slot
from ..standins import zeros_for
from .base import (AnalysisContext, GraphView, LayerKind, MacTerm, Rule, RuleTable, ShrinkContext, WeightedLayer,
                   describe_node)
from .callsite import Operand, arg, channel_factor, given, grouped_together, kept_count, set_arg


class GroupedConv(enum.Enum):
    """How a grouped convolution (k_in > 1) is pruned: the same channels inside every group (the group count
    stays, as Torch-Pruning does), or whole groups."""

    WITHIN = "within"
    WHOLE = "whole"

    @classmethod
    def of(cls, value) -> "GroupedConv":
        try:
            return cls(value)
        except ValueError:
            raise InputError(f"grouped_convs must be one of {[m.value for m in cls]}, got {value!r}") from None


@dataclass(frozen=True)
class ConvCall:
    """One convolution call site, whatever its spelling."""

    x: fx.Node
    weight: Operand
    bias: Operand | None
    groups: int
    transposed: bool
    spatial: int  # the kernel's rank: 1, 2 or 3

    def channel_dim(self, view: GraphView) -> int:
        return len(view.shape(self.x)) - self.spatial - 1

    def depthwise(self, view: GraphView) -> bool:
        return view.shape(self.x)[self.channel_dim(view)] == self.groups


class ConvModule:
    """nn.Conv1d/2d/3d and nn.ConvTranspose1d/2d/3d: tensors and sizes are attributes of the module."""

    def read(self, node: fx.Node, view: GraphView) -> ConvCall:
        m = view.module(node)
        return ConvCall(arg(node, 0, "input"), Operand.of_module(node, view, "weight"),
                        Operand.of_module(node, view, "bias"), m.groups, m.transposed, len(m.kernel_size))


@dataclass(frozen=True)
class ConvArguments:
    """A functional or ATen spelling: (x, weight, bias, ...) with `groups` at `groups_at`; transposed by name
    (F.conv_transpose*d) or by the argument at `transposed_at` (aten.convolution)."""

    groups_at: int
    transposed: bool = False
    transposed_at: int | None = None

    def read(self, node: fx.Node, view: GraphView) -> ConvCall:
        w = arg(node, 1, "weight")
        transposed = self.transposed or (self.transposed_at is not None and bool(node.args[self.transposed_at]))
        return ConvCall(arg(node, 0, "input"), Operand(node=w), Operand.of_arg(arg(node, 2, "bias")),
                        arg(node, self.groups_at, "groups", 1), transposed, len(view.shape(w)) - 2)

    def set_groups(self, node: fx.Node, groups: int) -> None:
        set_arg(node, self.groups_at, "groups", groups)


class ConvRule(Rule):
    """Convolution (module docstring), read through its spelling: a `ConvModule` or `ConvArguments`."""

    reads_values = False

    def __init__(self, spelling: ConvModule | ConvArguments, grouped: GroupedConv = GroupedConv.WITHIN):
        self.spelling, self.grouped = spelling, grouped

    def grouped_as(self, grouped: GroupedConv) -> "ConvRule":
        """This rule (its class and spelling kept) pruning grouped convolutions as `grouped`."""
        if grouped is self.grouped:
            return self
        changed = copy.copy(self)
        changed.grouped = grouped
        return changed

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        c = self.spelling.read(node, ctx)
        cdim = c.channel_dim(ctx)
        x_slot, out = ctx.input_slot(c.x, cdim), ctx.output_slot(node, cdim)
        if c.transposed and c.groups != 1:
            reason = f"grouped transposed convolution {describe_node(node, ctx.modules)} (groups={c.groups}) is not supported"
            return Effect(cdim, freezes=(Freeze(x_slot, reason), Freeze(out, reason)))
        if c.transposed:
            couplings = [Coupling(x_slot, c.weight.slot(ctx, 0, Role.CONSUMER)),
                         Coupling(out, c.weight.slot(ctx, 1, Role.PRODUCER))]
        else:
            couplings = [Coupling(out, c.weight.slot(ctx, 0, Role.PRODUCER))]
        if c.bias is not None:
            couplings.append(Coupling(out, c.bias.slot(ctx, 0, Role.PRODUCER)))
        if not c.transposed:
            couplings += self._input_couplings(ctx, c, x_slot, out)
        return Effect(cdim, couplings=tuple(couplings))

    def _input_couplings(self, ctx: AnalysisContext, c: ConvCall, x_slot: Slot, out: Slot) -> list[Coupling]:
        """Inputs tie to the weight's dim 1 (G == 1), each to its k_out outputs (depthwise), position j of every
        group to weight column j and outputs alike (within groups), or by whole groups."""
        c_in, c_out = ctx.sizes[x_slot], ctx.sizes[out]
        k_in, k_out = c_in // c.groups, c_out // c.groups
        if c.groups == 1:
            return [Coupling(x_slot, c.weight.slot(ctx, 1, Role.CONSUMER))]
        i, o = np.arange(c_in), np.arange(c_out)
        if k_in == 1:
            return [Coupling(x_slot, out, o // k_out, o)]
        if self.grouped is GroupedConv.WITHIN:
            return [Coupling(x_slot, c.weight.slot(ctx, 1, Role.CONSUMER), i, i % k_in), Coupling(out, out, o, o % k_out)]
        return [Coupling(x_slot, out, i, (i // k_in) * k_out), grouped_together(out, c_out, k_out)]

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        """A module follows its sliced weight (`resize`); a functional/ATen call whose groups are removed gets
        G = kept inputs / k_in."""
        if node.op == "call_module":
            self.resize(ctx.module(node))
            return
        c = self.spelling.read(node, ctx)
        kept = kept_count(ctx, c.x, c.channel_dim(ctx))
        if c.transposed or c.groups == 1 or kept is None:
            return
        if c.depthwise(ctx) or self.grouped is GroupedConv.WHOLE:  # k_in is unchanged (ctx has the shapes before)
            self.spelling.set_groups(node, kept // c.weight.shape(ctx)[1])

    def resize(self, module: nn.Module) -> nn.Module | None:
        """in/out_channels and groups from the sliced weight: G stays when grouped convs are pruned within groups,
        else G' = G * Cout' / Cout (depthwise, and whole groups: k_out is unchanged)."""
        if not isinstance(module, _ConvNd):
            return None
        w = module.weight
        if module.transposed:
            module.in_channels, module.out_channels = w.shape[0], w.shape[1] * module.groups
            return module
        depthwise = module.in_channels == module.groups
        if module.groups > 1 and (depthwise or self.grouped is GroupedConv.WHOLE):
            module.groups = module.groups * w.shape[0] // module.out_channels
        module.out_channels, module.in_channels = w.shape[0], w.shape[1] * module.groups
        return module

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        """numel(y) * prod(w.shape[1:]) (transposed: numel(x) * prod(w.shape[1:])); factors: module docstring."""
        c = self.spelling.read(node, view)
        cdim, taps = c.channel_dim(view), math.prod(c.weight.shape(view)[1:])
        if c.transposed:
            return (MacTerm(math.prod(view.shape(c.x)) * taps,
                            channel_factor(view, c.x, cdim) + channel_factor(view, node, cdim)),)
        reads_own_inputs = c.groups == 1 or (self.grouped is GroupedConv.WITHIN and not c.depthwise(view))
        factors = channel_factor(view, node, cdim) + (channel_factor(view, c.x, cdim) if reads_own_inputs else ())
        return (MacTerm(math.prod(view.shape(node)) * taps, factors),)

    def stand_in(self, op, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """Zeros shaped as a convolution's output (`_output_shape`): a module's own sizes or a function's arguments
        (input, weight, bias, stride, padding, dilation, groups); transposed ones are computed."""
        x = given(args, kwargs, 0, "input")
        if isinstance(op, nn.Module):
            if not isinstance(op, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or len(args) + len(kwargs) != 1:
                return None
            weight, bias, sizes = op.weight, op.bias, (op.stride, op.padding, op.dilation, op.groups)
        elif self.spelling.transposed or self.spelling.transposed_at is not None:
            return None
        else:
            weight, bias = given(args, kwargs, 1, "weight"), given(args, kwargs, 2, "bias")
            sizes = tuple(given(args, kwargs, i, name, default) for i, (name, default)
                          in enumerate((("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)), start=3))
        shape = _output_shape(x, weight, bias, *sizes)
        return None if shape is None else zeros_for(shape, math.prod(shape) * math.prod(weight.shape[1:]), x, weight, bias)

    def weighted_layer(self, node: fx.Node, view: GraphView) -> WeightedLayer | None:
        c = self.spelling.read(node, view)
        weight = c.weight.parameter(view)
        if weight is None:
            return None
        kind = LayerKind.DENSE_CONV if c.groups == 1 else LayerKind.GROUPED_CONV
        return WeightedLayer(kind, (weight,), groups=1 if c.transposed else c.groups)


def _output_shape(x, weight, bias, stride, padding, dilation, groups) -> tuple[int, ...] | None:
    """A convolution's output shape: (..., C_out, floor((L + 2 p - d (k - 1) - 1) / s) + 1 per spatial dim), L with
    padding "same", p = 0 with "valid". None for any call the op would reject, or that this does not read."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor) or not isinstance(groups, int):
        return None
    n = weight.ndim - 2
    stride, dilation = _per_dim(stride, n, least=1), _per_dim(dilation, n, least=1)
    padding = padding if padding in ("same", "valid") else _per_dim(padding, n, least=0)
    if n < 1 or stride is None or dilation is None or padding is None or x.ndim not in (n + 1, n + 2) or groups < 1:
        return None
    if x.shape[-n - 1] != weight.shape[1] * groups or weight.shape[0] % groups or 0 in weight.shape:
        return None
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != weight.shape[:1]):
        return None
    if padding == "same":
        return tuple(x.shape[:-n - 1]) + (weight.shape[0],) + tuple(x.shape[-n:]) if set(stride) == {1} else None
    padding = (0,) * n if padding == "valid" else padding
    out = [(size + 2 * p - d * (k - 1) - 1) // s + 1
           for size, k, s, p, d in zip(x.shape[-n:], weight.shape[2:], stride, padding, dilation)]
    return tuple(x.shape[:-n - 1]) + (weight.shape[0],) + tuple(out) if min(out) > 0 else None


def _per_dim(value, n: int, least: int) -> tuple[int, ...] | None:
    """An int or a sequence of n ints, each at least `least`, as n ints; None for anything else (the op's error)."""
    values = (value,) * n if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else ()
    return values if len(values) == n and all(isinstance(v, int) and v >= least for v in values) else None


def conv_rules(grouped: GroupedConv = GroupedConv.WITHIN) -> dict:
    """Every spelling of convolution -> its rule, grouped convolutions pruned as `grouped` says."""
    module = ConvRule(ConvModule(), grouped)
    modules = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    functions = (F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d)
    transposed = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
    return {**dict.fromkeys(modules, module),
            **dict.fromkeys(functions, ConvRule(ConvArguments(groups_at=6), grouped)),
            **dict.fromkeys(transposed, ConvRule(ConvArguments(groups_at=6, transposed=True), grouped)),
            torch.ops.aten.convolution.default: ConvRule(ConvArguments(groups_at=8, transposed_at=6), grouped)}


def with_grouped_convs(rules: RuleTable, grouped: GroupedConv) -> RuleTable:
    """`rules` with its convolution rules pruning grouped convolutions as `grouped`; a caller's own rule for a
    convolution stays (a ConvRule subclass keeps its class, any other rule is left as it is)."""
    return rules.mapped(lambda rule: rule.grouped_as(grouped) if isinstance(rule, ConvRule) else rule)
