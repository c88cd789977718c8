"""Embedding lookups: aten.embedding(W, ids, ...) (torch.export's spelling), y[..., d] = W[ids, d].

The output's last dim is W's dim 1. `ids` are read by value (a row index each), so channels
`ids` carries (a position_ids buffer) are frozen: removing one would change which rows are read.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ..groups import Coupling, Effect, Freeze, Role
from .base import AnalysisContext, Rule, describe_node, freeze_inputs
from .callsite import Operand


class EmbeddingRule(Rule):
    """embedding(W, ids, ...) (module docstring)."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        w, ids = node.args[:2]
        cdim = len(ctx.shape(node)) - 1
        if ctx.constant(w) is None:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} has a computed table"))
        freezes = ()
        if isinstance(ctx.channel_dim(ids), int):
            freezes = (Freeze(ctx.input_slot(ids, ctx.channel_dim(ids)), f"{describe_node(node)} reads `{ids.name}` "
                              "as row indices: removing one would change which rows are read"),)
        out = ctx.output_slot(node, cdim)
        return Effect(cdim, couplings=(Coupling(out, Operand(node=w).slot(ctx, 1, Role.PRODUCER)),), freezes=freezes)


def embedding_rules() -> dict:
    return {torch.ops.aten.embedding.default: EmbeddingRule()}
