"""Transformer patterns in Core ATen graphs that the generic rules cannot prove on their own.

- RMSNorm written by hand (Hugging Face LlamaRMSNorm, Qwen2, Mistral):
      s = mean(x * x, dim=-1, keepdim=True);  y = x * rsqrt(s + eps)   (then weight * y)
  The mean reduces over the channel dim, which in general changes what the model computes
  and freezes the channels. Here the statistic only rescales the same channels it was taken
  over, exactly like LayerNorm's: pruning channels keeps the model valid (the statistic is
  then taken over the kept channels; not exact, as for LayerNorm). `RMSStatisticRule`
  allows a reduction over the channel dim only when (1) its input is x*x or x**2, (2) it
  keeps the dim, and (3) every use of the statistic, through element-wise ops on the
  statistic alone (add eps, rsqrt, sqrt, reciprocal, casts), ends in a multiply or divide of
  that same x. Any other mean over channels stays frozen.
- grouped-query attention (`GroupedQuery`): repeat_kv spells `k[:, :, None].expand(n, hkv,
  r, l, d).reshape(n, hkv * r, l, d)`. `RepeatKVRule` (on aten.expand) either ties each KV
  head to its r query heads (KV_GROUPS: a KV head goes with its query heads; label pushing
  does this), or makes the repeat dim r the channel dim (QUERY_HEADS: query head g*r + i is
  tied to query head g'*r + i of every group, so each group keeps the same query heads and
  the repeat factor stays an integer; KV heads are kept).
"""
from __future__ import annotations

import enum

import torch
import torch.fx as fx

from ..errors import InputError
from ..groups import Effect
from .base import AnalysisContext, describe_node, freeze_inputs
from .elementwise import ReduceRule
from .movement import ReshapeRule

A = torch.ops.aten

_CASTS = (A._to_copy.default, A.clone.default, A.alias.default)
_ON_STATISTIC = (A.add.Tensor, A.add.Scalar, A.rsqrt.default, A.sqrt.default, A.reciprocal.default,
                 A.mul.Scalar, A.div.Scalar, A.pow.Tensor_Scalar) + _CASTS
_APPLY = (A.mul.Tensor, A.div.Tensor)
_RESHAPES = (A.view.default, A._unsafe_view.default, A.reshape.default)


def _root(node) -> object:
    """`node` with casts and copies stripped (x.to(float32) is the same channels as x)."""
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in _CASTS:
        node = node.args[0]
    return node


def _squared(node: fx.Node):
    """x when `node` is x * x or x ** 2 (casts stripped), else None."""
    if node.op != "call_function":
        return None
    if node.target is A.pow.Tensor_Scalar and node.args[1] == 2:
        return _root(node.args[0])
    if node.target is A.mul.Tensor and _root(node.args[0]) is _root(node.args[1]):
        return _root(node.args[0])
    return None


def _only_rescales(stat: fx.Node, x, depth: int = 8) -> bool:
    """Every use of `stat` is element-wise on the statistic alone, ending in `x * f(stat)` or `x / f(stat)`."""
    if depth == 0 or not stat.users:
        return False
    for user in stat.users:
        if user.op != "call_function":
            return False
        others = [a for a in user.args if a is not stat]
        if user.target in _APPLY and len(others) == 1 and _root(others[0]) is x:
            continue
        if user.target in _ON_STATISTIC and not any(isinstance(a, fx.Node) for a in others):
            if _only_rescales(user, x, depth - 1):
                continue
        return False
    return True


class RMSStatisticRule(ReduceRule):
    """mean(x*x, -1, keepdim=True) of an RMSNorm: allowed over the channel dim (module docstring); else a reduction."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x = node.args[0]
        d = ctx.channel_dim(x)
        if isinstance(d, int) and ctx.is_tensor(node) and self._is_rms_statistic(node, ctx, d):
            return Effect(None)
        return super().couple(node, ctx)

    def _is_rms_statistic(self, node: fx.Node, ctx: AnalysisContext, d: int) -> bool:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        rank = len(ctx.shape(node.args[0]))
        if not keepdim or not isinstance(dims, (list, tuple)) or [r % rank for r in dims] != [d]:
            return False
        x = _squared(node.args[0])
        return x is not None and _only_rescales(node, x)


class GroupedQuery(enum.Enum):
    """How grouped-query attention (fewer KV heads than query heads) is pruned.

    KV_GROUPS: a KV head is removed together with the query heads that read it.
    QUERY_HEADS: KV heads are kept; query heads are removed uniformly inside every KV group
    (the same positions in each), so the repeat factor stays an integer.
    """

    KV_GROUPS = "kv_groups"
    QUERY_HEADS = "query_heads"

    @classmethod
    def of(cls, value) -> "GroupedQuery":
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            raise InputError(f"gqa must be one of {[m.value for m in cls]}, got {value!r}; e.g. gqa='kv_groups'") from None


class RepeatKVRule(ReshapeRule):
    """aten.expand: with QUERY_HEADS, a repeat_kv expand of an unsqueezed KV-heads tensor carries the repeat dim."""

    def __init__(self, gqa: GroupedQuery = GroupedQuery.KV_GROUPS):
        self.gqa = gqa

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        repeat = self._repeat_dim(node, ctx) if self.gqa is GroupedQuery.QUERY_HEADS else None
        if repeat is None:
            return super().couple(node, ctx)
        reason = (f"{describe_node(node)} repeats key/value heads for grouped-query attention; with "
                  "gqa='query_heads' every KV head is kept and query heads are pruned inside each group")
        freezes = freeze_inputs(node, ctx, reason)
        ctx.output_slot(node, repeat)
        return Effect(repeat, freezes=freezes)

    @staticmethod
    def _repeat_dim(node: fx.Node, ctx: AnalysisContext) -> int | None:
        """The expanded dim r of (n, hkv, 1, l, d) -> (n, hkv, r, l, d) when x carries KV heads on the dim before it."""
        x = node.args[0]
        d = ctx.channel_dim(x)
        if not (ctx.is_tensor(x) and isinstance(d, int)) or not _merged_by_a_reshape(node, d):
            return None
        before, after = ctx.shape(x), ctx.shape(node)
        grown = [i for i in range(len(after)) if before[i] == 1 and after[i] > 1] if len(before) == len(after) else []
        return grown[0] if grown == [d + 1] else None



def _merged_by_a_reshape(node: fx.Node, d: int) -> bool:
    """`node` (through copies) feeds only reshapes that merge dims d and d + 1 (kv heads x repeats -> heads)."""
    users = list(node.users)
    while len(users) == 1 and users[0].target in _CASTS:
        users = list(users[0].users)
    shape = node.meta["gp_value"].shape
    merged = tuple(shape[:d]) + (shape[d] * shape[d + 1],) + tuple(shape[d + 2:])
    return bool(users) and all(u.target in _RESHAPES and tuple(u.meta["gp_value"].shape) == merged for u in users)
