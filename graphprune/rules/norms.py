"""Normalisation layers, in every spelling: batch norm (nn.BatchNorm*, F.batch_norm, F.instance_norm,
aten._native_batch_norm_legit*), layer norm (nn.LayerNorm, F.layer_norm, aten.native_layer_norm) and group
norm (nn.GroupNorm, F.group_norm, aten.native_group_norm).

Each is per channel: y[:, c] = (x[:, c] - m) w[c] / sqrt(v + eps) + b[c], with the statistics
per channel (batch/instance norm: exact under pruning), over the last dim (layer norm: the
statistics are then taken over the kept channels, valid but not exact) or over the C/G channels
of a group (group norm: whole groups are pruned, G' = kept / (C/G)). The per-channel tensors
(affine weight and bias, running statistics) are sliced with the channels. ATen's spellings
return (y, mean, rstd): channels ride on output 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ..groups import Coupling, Effect, Freeze, Role
from ..standins import dense_float
from .base import AnalysisContext, GraphView, Rule, ShrinkContext, aligned_dims, describe_node
from ..trace import value_meta
from .callsite import Operand, arg, first_outputs, grouped_together, kept_count, set_arg

A = torch.ops.aten


@dataclass(frozen=True)
class NormCall:
    """One normalisation call site: x, its per-channel tensors with their roles, and what it normalises over."""

    x: fx.Node
    tensors: tuple[tuple[Operand, Role], ...]
    returns_tuple: bool = False
    normalized_dims: int = 1  # layer norm: how many trailing dims it normalises over
    groups: int | None = None  # group norm: G


def _module_tensors(node: fx.Node, view: GraphView, named: tuple[tuple[str, Role], ...]) -> tuple:
    found = ((Operand.of_module(node, view, attr), role) for attr, role in named)
    return tuple((t, role) for t, role in found if t is not None)


def _arg_tensors(node: fx.Node, at: tuple[tuple[int, str, Role], ...]) -> tuple:
    found = ((Operand.of_arg(arg(node, position, name)), role) for position, name, role in at)
    return tuple((t, role) for t, role in found if t is not None)


_AFFINE = (("weight", Role.PRODUCER), ("bias", Role.PRODUCER))
_STATS = (("running_mean", Role.BUFFER), ("running_var", Role.BUFFER))


class NormRule(Rule):
    """What every norm shares: x's channels pass to the output and tie to its per-channel tensors.

    Subclasses say where the channel dim is, and may tie channels in groups or refuse a call site.
    """

    reads_values = False

    def __init__(self, spelling):
        self.spelling = spelling

    def channel_dim(self, c: NormCall, view: GraphView) -> int:
        return 1

    def refusal(self, node: fx.Node, c: NormCall, view: GraphView) -> str | None:
        """Why this call site cannot be pruned (its channels freeze), or None."""
        return None

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        c = self.spelling.read(node, ctx)
        cdim = self.channel_dim(c, ctx)
        x_slot = ctx.input_slot(c.x, cdim)
        reason = self.refusal(node, c, ctx)
        if c.returns_tuple:
            if reason:
                return Effect((None, None, None), freezes=(Freeze(x_slot, reason),))
            couplings, freezes = first_outputs(node, ctx, cdim, x_slot)
            out_dim = (cdim, None, None)
        else:
            out = ctx.output_slot(node, cdim)
            if reason:
                return Effect(cdim, freezes=(Freeze(x_slot, reason), Freeze(out, reason)))
            couplings, freezes, out_dim = [Coupling(x_slot, out)], [], cdim
        couplings += [Coupling(x_slot, t.slot(ctx, 0, role)) for t, role in c.tensors]
        if c.groups is not None:
            couplings.append(grouped_together(x_slot, ctx.sizes[x_slot], ctx.sizes[x_slot] // c.groups))
        return Effect(out_dim, couplings=tuple(couplings), freezes=tuple(freezes))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        c = self.spelling.read(node, ctx)
        kept = kept_count(ctx, c.x, self.channel_dim(c, ctx))
        if kept is not None:
            self.spelling.write(node, ctx, kept)


# -- batch norm and instance norm ------------------------------------------------------------------------------
class BatchNormModule:
    def read(self, node: fx.Node, view: GraphView) -> NormCall:
        return NormCall(arg(node, 0, "input"), _module_tensors(node, view, _AFFINE + _STATS))

    def write(self, node: fx.Node, ctx: ShrinkContext, kept: int) -> None:
        ctx.module(node).num_features = kept


@dataclass(frozen=True)
class BatchNormArguments:
    """F.batch_norm/F.instance_norm (x, mean, var, w, b, ...) and ATen's (x, w, b[, mean, var], ...)."""

    tensors: tuple[tuple[int, str, Role], ...]
    returns_tuple: bool = False

    def read(self, node: fx.Node, view: GraphView) -> NormCall:
        return NormCall(node.args[0], _arg_tensors(node, self.tensors), self.returns_tuple)

    def write(self, node: fx.Node, ctx: ShrinkContext, kept: int) -> None:
        return None  # the channel count is read from x


_BATCH_NORM_DIMS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}  # the input dims each takes


class BatchNormRule(NormRule):
    """Batch and instance norm: per channel on dim 1 (module docstring)."""

    def stand_in_past_stand_ins(self, op, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """An nn.BatchNorm1d/2d/3d in eval mode with running statistics, on one dense float tensor
        (standins.dense_float) of the dims it takes, whose C matches its per-channel tensors (dtype and device too):
        zeros laid out as the input. Anything else is computed, so that the op's own error speaks."""
        dims = _BATCH_NORM_DIMS.get(type(op))
        if dims is None or op.training or op.running_mean is None or op.running_var is None or len(args) != 1 or kwargs:
            return None
        x = args[0]
        if not dense_float(x) or x.dim() not in dims or any(
                t is not None and (t.shape != (x.shape[1],) or t.dtype != x.dtype or t.device != x.device)
                for t in (op.weight, op.bias, op.running_mean, op.running_var)):
            return None
        return torch.zeros_like(x)

    def resize(self, module: nn.Module) -> nn.Module | None:
        if not isinstance(module, (_BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            return None
        module.num_features = (module.weight if module.weight is not None else module.running_mean).shape[0]
        return module


# -- layer norm ---------------------------------------------------------------------------------------------------
class LayerNormModule:
    def read(self, node: fx.Node, view: GraphView) -> NormCall:
        m = view.module(node)
        return NormCall(arg(node, 0, "input"), _module_tensors(node, view, _AFFINE),
                        normalized_dims=len(m.normalized_shape))

    def write(self, node: fx.Node, ctx: ShrinkContext, kept: int) -> None:
        ctx.module(node).normalized_shape = (kept,)


@dataclass(frozen=True)
class LayerNormArguments:
    """F.layer_norm and aten.native_layer_norm: (x, normalized_shape, weight, bias, eps)."""

    returns_tuple: bool = False

    def read(self, node: fx.Node, view: GraphView) -> NormCall:
        tensors = _arg_tensors(node, ((2, "weight", Role.PRODUCER), (3, "bias", Role.PRODUCER)))
        return NormCall(node.args[0], tensors, self.returns_tuple, normalized_dims=len(arg(node, 1, "normalized_shape")))

    def write(self, node: fx.Node, ctx: ShrinkContext, kept: int) -> None:
        shape = arg(node, 1, "normalized_shape")
        set_arg(node, 1, "normalized_shape", type(shape)((kept,)))


class LayerNormRule(NormRule):
    """Layer norm over the last dim only (module docstring); over more dims it freezes. Channels on a dim it does
    not normalise over (heads, for a norm over head_dim: Persimmon's q/k LayerNorm) pass through exactly: every
    position along that dim is normalised on its own, with the same weight and bias, which are kept whole."""

    rewrites_size_arguments = True  # F.layer_norm(x, (c,)): a size query passed as normalized_shape is rewritten
    carries_heads = True  # a q/k norm over head_dim on the way into attention keeps whole heads

    def channel_dim(self, c: NormCall, view: GraphView) -> int:
        return len(view.shape(c.x)) - 1

    def head_dims_of_input(self, node: fx.Node, source: fx.Node, dims: frozenset[int]) -> frozenset[int]:
        """The normalised output has x's shape (under export it is the first part of aten.native_layer_norm's
        (out, mean, rstd)): the dims of x are the output's, aligned from the right as for any broadcasting op."""
        out = value_meta(node)
        return aligned_dims(out[0] if isinstance(out, (tuple, list)) and out else out, value_meta(source), dims)

    @staticmethod
    def _row_dim(c: NormCall, view: GraphView) -> int | None:
        """x's channel dim when it is one the norm does not normalise over, else None."""
        d = view.channel_dim(c.x)
        return d if isinstance(d, int) and d < len(view.shape(c.x)) - c.normalized_dims else None

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        c = self.spelling.read(node, ctx)
        d = self._row_dim(c, ctx)
        if d is None:
            return super().couple(node, ctx)
        x_slot = ctx.input_slot(c.x, d)
        reason = f"{describe_node(node, ctx.modules)} normalises over dims that carry no channels: its weight is kept whole"
        whole = [Freeze(t.slot(ctx, 0, role), reason, kept_whole=True) for t, role in c.tensors]
        if c.returns_tuple:
            couplings, freezes = first_outputs(node, ctx, d, x_slot)
            return Effect((d, None, None), couplings=tuple(couplings), freezes=tuple(freezes + whole))
        return Effect(d, couplings=(Coupling(x_slot, ctx.output_slot(node, d)),), freezes=tuple(whole))

    def refusal(self, node: fx.Node, c: NormCall, view: GraphView) -> str | None:
        if c.normalized_dims != 1:
            return f"{describe_node(node, view.modules)} normalises over {c.normalized_dims} dims"
        return None

    def renormalises(self, node: fx.Node, view: GraphView) -> bool:
        return self._row_dim(self.spelling.read(node, view), view) is None

    def resize(self, module: nn.Module) -> nn.Module | None:
        if not isinstance(module, nn.LayerNorm) or module.weight is None:
            return None
        module.normalized_shape = tuple(module.weight.shape)
        return module


# -- group norm ---------------------------------------------------------------------------------------------------
class GroupNormModule:
    def read(self, node: fx.Node, view: GraphView) -> NormCall:
        return NormCall(arg(node, 0, "input"), _module_tensors(node, view, _AFFINE), groups=view.module(node).num_groups)

    def write(self, node: fx.Node, ctx: ShrinkContext, kept: int) -> None:
        m = ctx.module(node)
        m.num_channels, m.num_groups = kept, kept // (m.num_channels // m.num_groups)


class GroupNormFunction:
    """F.group_norm(x, num_groups, weight, bias, eps)."""

    def read(self, node: fx.Node, view: GraphView) -> NormCall:
        tensors = _arg_tensors(node, ((2, "weight", Role.PRODUCER), (3, "bias", Role.PRODUCER)))
        return NormCall(node.args[0], tensors, groups=arg(node, 1, "num_groups"))

    def write(self, node: fx.Node, ctx: ShrinkContext, kept: int) -> None:
        width = ctx.shape(node.args[0])[1] // arg(node, 1, "num_groups")
        set_arg(node, 1, "num_groups", kept // width)


class GroupNormAten:
    """aten.native_group_norm(x, weight, bias, N, C, HxW, G, eps) -> (y, mean, rstd)."""

    def read(self, node: fx.Node, view: GraphView) -> NormCall:
        tensors = _arg_tensors(node, ((1, "weight", Role.PRODUCER), (2, "bias", Role.PRODUCER)))
        return NormCall(node.args[0], tensors, returns_tuple=True, groups=node.args[6])

    def write(self, node: fx.Node, ctx: ShrinkContext, kept: int) -> None:
        width = node.args[4] // node.args[6]
        set_arg(node, 4, "C", kept)
        set_arg(node, 6, "group", kept // width)


class GroupNormRule(NormRule):
    """Group norm: channels of one of the G groups go together (module docstring)."""

    def resize(self, module: nn.Module) -> nn.Module | None:
        if not isinstance(module, nn.GroupNorm) or module.weight is None:
            return None
        module.num_groups = module.num_groups * module.weight.shape[0] // module.num_channels
        module.num_channels = module.weight.shape[0]
        return module


def norm_rules() -> dict:
    """Every spelling of a normalisation layer -> its rule."""
    functional_bn = ((1, "running_mean", Role.BUFFER), (2, "running_var", Role.BUFFER), (3, "weight", Role.PRODUCER),
                     (4, "bias", Role.PRODUCER))
    aten_affine = ((1, "weight", Role.PRODUCER), (2, "bias", Role.PRODUCER))
    aten_stats = aten_affine + ((3, "running_mean", Role.BUFFER), (4, "running_var", Role.BUFFER))
    aten_bn = BatchNormRule(BatchNormArguments(aten_stats, returns_tuple=True))
    return {
        **dict.fromkeys((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), BatchNormRule(BatchNormModule())),
        **dict.fromkeys((F.batch_norm, F.instance_norm), BatchNormRule(BatchNormArguments(functional_bn))),
        A._native_batch_norm_legit_no_training.default: aten_bn, A._native_batch_norm_legit.default: aten_bn,
        A._native_batch_norm_legit.no_stats: BatchNormRule(BatchNormArguments(aten_affine, returns_tuple=True)),
        nn.LayerNorm: LayerNormRule(LayerNormModule()),
        F.layer_norm: LayerNormRule(LayerNormArguments()),
        A.native_layer_norm.default: LayerNormRule(LayerNormArguments(returns_tuple=True)),
        nn.GroupNorm: GroupNormRule(GroupNormModule()),
        F.group_norm: GroupNormRule(GroupNormFunction()),
        A.native_group_norm.default: GroupNormRule(GroupNormAten()),
    }
