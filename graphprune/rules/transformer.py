"""Transformer patterns in Core ATen graphs that the generic rules cannot prove on their own.

- RMSNorm written by hand: a normalising statistic, see statistics.py.
- grouped-query attention (`GroupedQuery`): repeat_kv spells `k[:, :, None].expand(n, hkv,
  r, l, d).reshape(n, hkv * r, l, d)`. `RepeatKVRule` (on aten.expand) either ties each KV
  head to its r query heads (KV_GROUPS: a KV head goes with its query heads; label pushing
  does this), or makes the repeat dim r the channel dim (QUERY_HEADS: query head g*r + i is
  tied to query head g'*r + i of every group, so each group keeps the same query heads and
  the repeat factor stays an integer; KV heads are kept). With one KV head (multi-query attention
  written as repeat_kv: `(n, 1, 1, l, d) -> (n, 1, r, l, d)`), both modes make r the channel dim:
  the one KV head is kept whole (its channels lie inside the head) and query heads are pruned alone,
  query head i reading the same keys and values as before (exact).
"""
from __future__ import annotations

import enum

import torch
import torch.fx as fx

from ..errors import InputError
from ..groups import Effect
from .base import AnalysisContext, describe_node, freeze_inputs
from .movement import ATEN_RESHAPES, ReshapeRule, grown_dims
from .statistics import CASTS

A = torch.ops.aten


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
        if repeat is not None:
            reason = (f"{describe_node(node)} repeats key/value heads for grouped-query attention; with "
                      "gqa='query_heads' every KV head is kept and query heads are pruned inside each group")
        else:
            repeat = self._one_head_repeat_dim(node, ctx)
            reason = (f"{describe_node(node)} repeats one key/value head for every query head (multi-query "
                      "attention): it is kept whole and query heads are pruned alone")
        if repeat is None:
            return super().couple(node, ctx)
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
        grown = grown_dims(before, after)
        return grown[0] if grown == [d + 1] else None

    @staticmethod
    def _one_head_repeat_dim(node: fx.Node, ctx: AnalysisContext) -> int | None:
        """The expanded dim r of (n, 1, 1, l, d) -> (n, 1, r, l, d) merged into (n, r, l, d): one KV head, whose
        channels (if any) lie after r, inside the head."""
        x = node.args[0]
        if not ctx.is_tensor(x):
            return None
        before, after = ctx.shape(x), ctx.shape(node)
        grown = grown_dims(before, after)  # none when the ranks differ
        if len(grown) != 1 or grown[0] == 0 or before[grown[0] - 1] != 1:
            return None
        d = ctx.channel_dim(x)
        inside = not isinstance(d, int) or d > grown[0]
        return grown[0] if inside and _merged_by_a_reshape(node, grown[0] - 1) else None


def _merged_by_a_reshape(node: fx.Node, d: int) -> bool:
    """`node` (through copies) feeds only reshapes that merge dims d and d + 1 (kv heads x repeats -> heads)."""
    users = list(node.users)
    while len(users) == 1 and users[0].target in CASTS:
        users = list(users[0].users)
    shape = node.meta["gp_value"].shape
    merged = tuple(shape[:d]) + (shape[d] * shape[d + 1],) + tuple(shape[d + 2:])
    return bool(users) and all(u.target in ATEN_RESHAPES and tuple(u.meta["gp_value"].shape) == merged for u in users)
