"""Normalising statistics over the channel dim: one policy for every spelling of a normalisation written by hand.

A reduction over the channel dim in general changes what the model computes, and freezes the
channels. A normalisation is different: RMSNorm (`x * rsqrt(mean(x * x, -1, keepdim=True) + eps)`),
an L2 normalisation (`x / x.pow(2).sum(1, keepdim=True).sqrt()`, `x / x.norm(dim=1, keepdim=True)`)
take a statistic over the channels only to rescale those same channels, exactly like LayerNorm's
statistics. Pruning channels keeps such a model valid; the statistic is then taken over the kept
channels, so it is not exact, as for LayerNorm (`nn.LayerNorm`, `F.layer_norm`, aten.native_layer_norm
are pruned under the same policy, rules/norms.py).

`NormalisingStatisticRule` allows a reduction (mean, sum, vector norm) over the channel dim only when
(1) it reduces the channel dim alone and keeps it, (2) its input is x, x * x or x ** 2 (casts
stripped), and (3) every use of the statistic, through element-wise ops on the statistic alone (add
eps, sqrt, rsqrt, reciprocal, clamp, scalar arithmetic, casts, an expand back to x's shape), ends in a
multiply or divide of that same x. F.normalize, one call in fx graphs, is `elementwise.NormaliseAlongRule`;
torch.export spells it norm, clamp, expand and divide, read here (the expand: `movement.broadcast_dim`).
Anything else is an ordinary reduction (`ReduceRule`). Both spellings (torch/Tensor methods in fx graphs,
Core ATen in exported ones) are read through `callable_of`.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..groups import Effect
from .base import AnalysisContext, GraphView, callable_of
from .callsite import arg
from .elementwise import ReduceRule

A = torch.ops.aten
T = torch.Tensor

CASTS = frozenset({A._to_copy.default, A.clone.default, A.alias.default, T.to, T.float, T.clone, T.contiguous})
_SQUARES = frozenset({A.pow.Tensor_Scalar, torch.pow, T.pow, operator.pow})
_PRODUCTS = frozenset({A.mul.Tensor, operator.mul, torch.mul, T.mul})
_ON_STATISTIC = frozenset({
    A.add.Tensor, A.add.Scalar, A.rsqrt.default, A.sqrt.default, A.reciprocal.default, A.mul.Scalar, A.div.Scalar,
    A.pow.Tensor_Scalar, A.clamp.default, A.expand.default, operator.add, operator.mul, operator.truediv,
    operator.pow, torch.add, T.add, torch.sqrt, T.sqrt, torch.rsqrt, T.rsqrt, torch.reciprocal, T.reciprocal,
    torch.clamp, T.clamp, T.clamp_min, torch.clamp_min, torch.pow, T.pow, T.expand}) | CASTS
_APPLY = frozenset({A.mul.Tensor, A.div.Tensor, operator.mul, operator.truediv, torch.mul, torch.div, T.mul, T.div})


def _root(node) -> object:
    """`node` with casts and copies stripped (x.to(float32) is the same channels as x)."""
    while isinstance(node, fx.Node) and callable_of(node) in CASTS:
        node = node.args[0]
    return node


def _base(node) -> object:
    """x when `node` is x, x * x or x ** 2 (casts stripped)."""
    root = _root(node)
    if not isinstance(root, fx.Node) or root.op not in ("call_function", "call_method"):
        return root
    fn = callable_of(root)
    if fn in _SQUARES and len(root.args) > 1 and root.args[1] == 2:
        return _root(root.args[0])
    if fn in _PRODUCTS and len(root.args) > 1 and _root(root.args[0]) is _root(root.args[1]):
        return _root(root.args[0])
    return root


def _only_rescales(stat: fx.Node, x, view: GraphView, depth: int = 8) -> bool:
    """Every use of `stat` is element-wise on the statistic alone, ending in `x * f(stat)` or `x / f(stat)`."""
    if depth == 0 or not stat.users:
        return False
    for user in stat.users:
        if user.op not in ("call_function", "call_method"):
            return False
        fn = callable_of(user)
        others = [a for a in list(user.args) + list(user.kwargs.values()) if a is not stat]
        if fn in _APPLY and len(others) == 1 and _root(others[0]) is x:
            continue
        if fn in _ON_STATISTIC and not any(view.is_tensor(a) for a in others):  # sizes (h.size(1)) may be nodes
            if _only_rescales(user, x, view, depth - 1):
                continue
        return False
    return True


class NormalisingStatisticRule(ReduceRule):
    """A reduction that may be a normalising statistic over the channel dim (module docstring)."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        d = ctx.channel_dim(node.args[0])
        if isinstance(d, int) and ctx.is_tensor(node) and self._normalises(node, ctx, d):
            return Effect(None)
        return super().couple(node, ctx)

    def renormalises(self, node: fx.Node, view: GraphView) -> bool:
        d = view.channel_dim(node.args[0])
        return isinstance(d, int) and view.is_tensor(node) and self._normalises(node, view, d)

    def _normalises(self, node: fx.Node, ctx: GraphView, d: int) -> bool:
        dims = arg(node, self.dim_at, "dim")
        rank = len(ctx.shape(node.args[0]))
        dims = [dims] if isinstance(dims, int) else dims
        if not arg(node, self.keepdim_at, "keepdim", False) or not isinstance(dims, (list, tuple)):
            return False
        if any(not isinstance(r, int) for r in dims) or [r % rank for r in dims] != [d]:
            return False
        return _only_rescales(node, _base(node.args[0]), ctx)
