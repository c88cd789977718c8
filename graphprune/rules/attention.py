"""Attention: nn.MultiheadAttention, matmul and scaled_dot_product_attention.

Whole heads are pruned, never single dims inside a head, so the softmax scale 1/sqrt(d)
and every kept head stay exactly as they were:
  - nn.MultiheadAttention: the heads are one group (rows of the q/k/v projections and the
    matching columns of out_proj, merged per head); the embedding dim it reads and writes
    belongs to the residual stream's group. A pruned module is replaced by
    `PrunedMultiheadAttention`, which allows (heads x head_dim) != embed_dim.
  - attention written with matmul/softmax or F.scaled_dot_product_attention: the reshape
    that splits channels into (heads, head_dim) on the way into attention keeps the head
    dim as its channel dim (see analysis.attention_inputs), and matmul ties its batch dims,
    rows and columns to the output and its contracted dims together.
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..groups import Coupling, Effect, Freeze, Role, Slot
from ..standins import zeros_for
from ..trace import META_KEY, TensorMeta
from .base import (AnalysisContext, GraphView, LayerKind, MacTerm, Rule, ShrinkContext, WeightedLayer, describe_node,
                   freeze_inputs)
from .callsite import arg, set_arg


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention with `num_heads * head_dim` free of `embed_dim` (what remains after head pruning).

    Same parameters and call signature as nn.MultiheadAttention (masks unsupported);
    returns (output, None).
    """

    _qkv_same_embed_dim, bias_k, add_zero_attn = True, None, False  # as nn.MultiheadAttention, for its rule

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, batch_first: bool, dropout: float,
                 in_proj_weight: torch.Tensor, in_proj_bias: torch.Tensor | None, out_proj: nn.Linear):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        self.in_proj_weight = nn.Parameter(in_proj_weight.detach().clone())
        self.in_proj_bias = nn.Parameter(in_proj_bias.detach().clone()) if in_proj_bias is not None else None
        self.out_proj = out_proj

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, lq, lk = query.shape[0], query.shape[1], key.shape[1]
        if query is key and key is value:
            # self-attention: one packed projection whose output is split, as nn.MultiheadAttention does; splitting
            # the weights instead would make them computed tensors, which edge delegates (XNNPACK) cannot take
            inner = self.num_heads * self.head_dim
            packed = F.linear(query, self.in_proj_weight, self.in_proj_bias).unflatten(-1, (3, inner))
            packed = packed.unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
            q, k, v = packed[0], packed[1], packed[2]
        else:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
            b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
            q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        q = q.view(n, lq, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(n, lk, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.view(n, lk, self.num_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, self.num_heads * self.head_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _call_args(node: fx.Node):
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
    values = dict(zip(names, node.args))
    values.update(node.kwargs)
    return values


class MultiheadAttentionRule(Rule):
    """nn.MultiheadAttention: its input and output embeddings and its heads."""

    reads_values = False

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        m = ctx.module(node)
        call = _call_args(node)
        q, k, v = call["query"], call["key"], call["value"]
        cdim = len(ctx.shape(q)) - 1
        problem = None
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            problem = "uses separate k/v dims, bias_k or add_zero_attn"
        elif any(isinstance(call.get(a), fx.Node) for a in ("key_padding_mask", "attn_mask")):
            problem = "is called with an attention mask"
        elif any(u.target is not operator.getitem for u in node.users):
            problem = "output tuple is used whole"
        elif any(u.args[1] != 0 and u.users for u in node.users):
            problem = "returns attention weights that are used"
        if problem is not None:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node, ctx.modules)} {problem}"))
        users = [u for u in node.users if u.args[1] == 0]
        name = node.target
        w_in = ctx.param_slot(f"{name}.in_proj_weight", 1, Role.CONSUMER)
        couplings = [Coupling(ctx.input_slot(t, cdim), w_in) for t in dict.fromkeys((q, k, v))]
        for u in users:
            out = ctx.output_slot(u, cdim)
            couplings.append(Coupling(out, ctx.param_slot(f"{name}.out_proj.weight", 0, Role.PRODUCER)))
            if m.out_proj.bias is not None:
                couplings.append(Coupling(out, ctx.param_slot(f"{name}.out_proj.bias", 0, Role.PRODUCER)))
        # heads: column p of out_proj reads rows p, E+p, 2E+p of in_proj; a head's head_dim columns go together
        e, d = m.out_proj.weight.shape[1], m.head_dim  # E = heads * head_dim (== embed_dim before pruning)
        p = np.arange(e)
        heads = ctx.param_slot(f"{name}.out_proj.weight", 1, Role.CONSUMER)
        couplings.append(Coupling(heads, heads, p, (p // d) * d))
        rows = ctx.param_slot(f"{name}.in_proj_weight", 0, Role.PRODUCER)
        couplings.append(Coupling(heads, rows, np.tile(p, 3), np.arange(3 * e)))
        if m.in_proj_bias is not None:
            couplings.append(Coupling(rows, ctx.param_slot(f"{name}.in_proj_bias", 0, Role.PRODUCER)))
        return Effect((cdim, None), couplings=tuple(couplings))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        m = ctx.module(node)
        resized = self.resize(m)
        if resized is not m:
            parent_name, _, attr = node.target.rpartition(".")
            setattr(ctx.gm.get_submodule(parent_name) if parent_name else ctx.gm, attr, resized)

    def resize(self, module: nn.Module) -> nn.Module | None:
        """out_proj's sizes from its weight; heads x head_dim no longer equal to embed_dim need a
        PrunedMultiheadAttention (returned in its place)."""
        if not isinstance(module, (nn.MultiheadAttention, PrunedMultiheadAttention)):
            return None
        m = module
        inner, embed = m.out_proj.weight.shape[1], m.in_proj_weight.shape[1]
        m.out_proj.in_features, m.out_proj.out_features = inner, m.out_proj.weight.shape[0]
        if isinstance(m, nn.MultiheadAttention) and inner == embed == m.embed_dim:
            return m
        pruned = PrunedMultiheadAttention(embed, inner // m.head_dim, m.head_dim, m.batch_first, m.dropout,
                                          m.in_proj_weight, m.in_proj_bias, m.out_proj)
        pruned.train(m.training)
        return pruned

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        """Per sample, with Lq queries, Lk keys, input width E_in, inner width D (heads x head_dim), output width E_out:
        projections (Lq + 2 Lk) E_in D, scores and weighted sum 2 Lq Lk D, output projection Lq D E_out.
        """
        m = view.module(node)
        call = _call_args(node)
        q, k = view.shape(call["query"]), view.shape(call["key"])
        lq, lk = (q[1], k[1]) if m.batch_first else (q[0], k[0])
        n = math.prod(q) // (lq * q[-1])
        e_in, inner, e_out = m.in_proj_weight.shape[1], m.out_proj.weight.shape[1], m.out_proj.weight.shape[0]
        e_in_slot = Slot(f"{node.target}.in_proj_weight", 1, Role.CONSUMER)
        inner_slot = Slot(f"{node.target}.out_proj.weight", 1, Role.CONSUMER)
        e_out_slot = Slot(f"{node.target}.out_proj.weight", 0, Role.PRODUCER)
        return (MacTerm(n * (lq + 2 * lk) * e_in * inner, (e_in_slot, inner_slot)),
                MacTerm(n * 2 * lq * lk * inner, (inner_slot,)),
                MacTerm(n * lq * inner * e_out, (inner_slot, e_out_slot)))

    def weighted_layer(self, node: fx.Node, view: GraphView) -> WeightedLayer:
        return WeightedLayer(LayerKind.LINEAR, (f"{node.target}.in_proj_weight", f"{node.target}.out_proj.weight"))

    def stand_in(self, op, args: tuple, kwargs: dict):
        """(zeros shaped as the output, None) for self-attention asked for no weights, without masks: query, key and
        value of one 3-D shape (..., E_in) give (..., E_out); multiply-adds as `cost` counts them."""
        call = dict(zip(("query", "key", "value", "key_padding_mask", "need_weights"), args), **kwargs)
        q, k, v = call.get("query"), call.get("key"), call.get("value")
        if type(op) is not nn.MultiheadAttention or set(call) != {"query", "key", "value", "need_weights"} \
                or call["need_weights"] is not False or not op._qkv_same_embed_dim or op.bias_k is not None \
                or op.add_zero_attn or not all(isinstance(t, torch.Tensor) for t in (q, k, v)) or q.ndim != 3 \
                or not q.shape == k.shape == v.shape or q.shape[-1] != op.in_proj_weight.shape[1]:
            return None
        tokens, length = q.shape[0] * q.shape[1], q.shape[1] if op.batch_first else q.shape[0]
        e_in, e_out = op.in_proj_weight.shape[1], op.out_proj.weight.shape[0]
        macs = tokens * (3 * e_in * e_in + 2 * length * e_in + e_in * e_out)
        out = zeros_for((*q.shape[:2], e_out), macs, q, k, v, op.in_proj_weight, op.in_proj_bias, op.out_proj.weight,
                        op.out_proj.bias)
        return None if out is None else (out, None)


class MatMulRule(Rule):
    """a (..., n, k) @ b (..., k, m): batch dims, rows of a and columns of b pass to the output; a's k ~ b's k."""

    reads_values = False
    reads_heads = True

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        a, b = node.args[0], node.args[1]
        if not (ctx.is_tensor(a) and ctx.is_tensor(b)) or len(ctx.shape(a)) < 2 or len(ctx.shape(b)) < 2:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} is not a batched matrix product"))
        ra, rb, ro = len(ctx.shape(a)), len(ctx.shape(b)), len(ctx.shape(node))
        contracted = {a: (ra - 1, b, rb - 2), b: (rb - 2, a, ra - 1)}
        kept = {a: ra - 2, b: rb - 1}
        couplings, passing = [], []
        for x in dict.fromkeys((a, b)):
            d = ctx.channel_dim(x)
            if not isinstance(d, int):
                continue
            rank = len(ctx.shape(x))
            own, other, other_dim = contracted[x]
            if d == own and ctx.constant(other) is None:
                reason = (f"{describe_node(node)} contracts the channel dim of two activations (a dot product over "
                          "features, as inside an attention head): removing some would change every product")
                return Effect(None, freezes=freeze_inputs(node, ctx, reason))
            if d == own:
                couplings.append(Coupling(ctx.input_slot(x, d), self._operand_slot(other, other_dim, ctx)))
            elif d == kept[x]:
                passing.append((x, d, ro - (2 if x is a else 1)))
            elif ctx.shape(x)[d] > 1:
                passing.append((x, d, d + ro - rank))
        if len({o for _, _, o in passing}) > 1:
            reason = f"{describe_node(node)} has channels on two output dims"
            return Effect(None, freezes=freeze_inputs(node, ctx, reason))
        if not passing:
            return Effect(None, couplings=tuple(couplings))
        out_dim = passing[0][2]
        out = ctx.output_slot(node, out_dim)
        couplings += [Coupling(ctx.input_slot(x, d), out) for x, d, _ in passing]
        return Effect(out_dim, couplings=tuple(couplings))

    @staticmethod
    def _operand_slot(x: fx.Node, dim: int, ctx: AnalysisContext):
        if ctx.constant(x) is not None:
            return ctx.param_slot(x.target, dim, Role.CONSUMER)
        return ctx.input_slot(x, dim)

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        """numel(y) * k for (..., n, k) @ (..., k, m); scales with the output's channel dim and a's contracted dim."""
        a = node.args[0]
        rank = len(view.shape(a))
        factors = []
        out_dim = view.channel_dim(node)
        if isinstance(out_dim, int):
            factors.append(Slot(node.name, out_dim))
        if view.channel_dim(a) == rank - 1:
            factors.append(Slot(a.name, rank - 1))
        return (MacTerm(math.prod(view.shape(node)) * view.shape(a)[-1], tuple(factors)),)


class ScaledDotProductAttentionRule(Rule):
    """scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa), as F.* and as
    aten.*: whole heads (dim -3) pass through, with masks that broadcast over heads, and grouped-query
    attention (query head h reads key/value head h // (Hq / Hkv)); head_dim only with an explicit scale.
    Multi-query attention (one key/value head broadcast over Hq > 1 query heads, Falcon's) keeps its key/value
    head and prunes query heads alone: each still reads the same k and v (exact).

    A mask per head whose heads dim carries channels (a relative position bias: T5's, Swin's) is tied to the query
    heads: head h's scores are q_h k_h^T * scale + mask[h], so removing head h removes mask[h], which no other head
    reads, and every kept head computes what it did (exact). A mask per head whose heads no channels follow (T5's
    cross-attention bias: zeros of n_heads plus the padding mask) is read through an index_select of the kept heads'
    rows, inserted by `shrink` (exact for the same reason); one whose heads dim carries other channels freezes.
    """

    reads_values = False

    reads_heads = True

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        q, k, v = node.args[:3]
        mask = arg(node, 3, "attn_mask")
        rank = len(ctx.shape(q))
        hd = rank - 3
        per_head = isinstance(mask, fx.Node) and _mask_head_size(ctx.shape(mask), rank) > 1
        mask_heads = len(ctx.shape(mask)) - 3 if per_head else None
        selected = per_head and ctx.channel_dim(mask) is None and ctx.shape(mask)[mask_heads] == ctx.shape(q)[hd]
        if not isinstance(mask, fx.Node):
            if {ctx.channel_dim(t) for t in (q, k, v)} != {hd} or ctx.shape(k)[hd] == ctx.shape(q)[hd]:
                return self._one_layout(node, ctx)
        elif selected:
            per_head = False  # its rows are selected by `shrink`, not tied
        elif ctx.channel_dim(mask) != mask_heads or (per_head and ctx.shape(mask)[mask_heads] != ctx.shape(q)[hd]):
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} has a mask per head"))
        if any(ctx.channel_dim(t) not in (hd, None) for t in (q, k, v)):
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} has channels inside heads"))
        hq, hk = ctx.shape(q)[hd], ctx.shape(k)[hd]
        if hk == 0 or hq % hk or ctx.shape(v)[hd] != hk:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)}: {hq} query heads, {hk} kv heads"))
        out = ctx.output_slot(node, hd)
        h = np.arange(hq)
        couplings = [Coupling(ctx.input_slot(q, hd), out)]
        if per_head:
            couplings.append(Coupling(out, ctx.input_slot(mask, mask_heads)))
        if hk == 1 < hq:  # multi-query: one key/value head, broadcast to every query head, which prune alone
            reason = f"{describe_node(node)} reads one key/value head for every query head (multi-query attention)"
            kv = tuple(Freeze(ctx.input_slot(t, hd), reason) for t in dict.fromkeys((k, v))
                       if ctx.channel_dim(t) == hd)
            return Effect(hd, couplings=tuple(couplings), freezes=kv)
        couplings += [Coupling(out, ctx.input_slot(t, hd), h, h // (hq // hk)) for t in dict.fromkeys((k, v))]
        return Effect(hd, couplings=tuple(couplings))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        """A per-head mask no channels follow is read through index_select of the kept heads' rows."""
        mask, hd = arg(node, 3, "attn_mask"), len(ctx.shape(node.args[0])) - 3
        kept = ctx.kept(node.name, hd)
        if kept is None or not isinstance(mask, fx.Node) or ctx.declared.get(mask.name) is not None:
            return
        shape = ctx.shape(mask)
        if _mask_head_size(shape, hd + 3) != ctx.shape(node.args[0])[hd]:
            return
        name = f"{node.name}_kept_heads"
        ctx.gm.register_buffer(name, torch.tensor(kept, dtype=torch.int64))  # its own copy: kept is read-only
        dim = len(shape) - 3
        with ctx.gm.graph.inserting_before(node):
            index = ctx.gm.graph.get_attr(name)
            rows = ctx.gm.graph.call_function(torch.ops.aten.index_select.default, (mask, dim, index))
        index.meta[META_KEY] = TensorMeta((len(kept),), torch.int64)
        rows.meta[META_KEY] = TensorMeta(tuple(len(kept) if i == dim else n for i, n in enumerate(shape)),
                                         ctx.value(mask).dtype)
        set_arg(node, 3, "attn_mask", rows)

    @staticmethod
    def _one_layout(node: fx.Node, ctx: AnalysisContext) -> Effect:
        """No mask, q, k, v with channels on one dim: the heads (dim -3), or head_dim when the scale is explicit."""
        q, k, v = node.args[:3]
        rank = len(ctx.shape(q))
        dims = {ctx.channel_dim(t) for t in (q, k, v)}
        if len(dims) != 1:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} has mixed layouts"))
        d = dims.pop()
        if d == rank - 3:
            out = ctx.output_slot(node, d)
            couplings = tuple(Coupling(ctx.input_slot(t, d), out) for t in dict.fromkeys((q, k, v)))
            return Effect(d, couplings=couplings)
        if d == rank - 1 and arg(node, 6, "scale") is not None:
            out = ctx.output_slot(node, d)
            return Effect(d, couplings=(Coupling(ctx.input_slot(q, d), ctx.input_slot(k, d)),
                                        Coupling(ctx.input_slot(v, d), out)))
        reason = f"{describe_node(node)}: pruning inside a head would change the default scale 1/sqrt(head_dim)"
        return Effect(None, freezes=freeze_inputs(node, ctx, reason))

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        """Scores q k^T and the weighted sum of v: 2 * numel(q) * keys; scales with the heads (the output's channel dim)."""
        q, k = view.shape(node.args[0]), view.shape(node.args[1])
        out_dim = view.channel_dim(node)
        factors = (Slot(node.name, out_dim),) if isinstance(out_dim, int) else ()
        return (MacTerm(2 * math.prod(q) * k[-2], factors),)


def _mask_head_size(shape: tuple, rank: int) -> int:
    """The size of a mask's heads dim (dim -3 of the query), 1 when it broadcasts over heads."""
    return shape[len(shape) - 3] if len(shape) >= 3 else 1
