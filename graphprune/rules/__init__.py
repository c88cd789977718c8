"""Rules: how each op family couples channels (analysis), shrinks (rewrite), costs (planning, report) and
resizes a module (rewrite and eager rebuild).

One table serves both frontends: modules and Python callables (the fx frontend's spelling)
and Core ATen OpOverloads (the torch.export frontend's, see aten.py). A family with several
spellings (convolution, linear, norms) has one rule reading each spelling through an adapter
(callsite.py); `families.family_rules()` lists their spellings.

`default_rules()` returns the built-in table; extend it with
`default_rules().with_rule(MyBlock, MyRule())` — nothing global is mutated.
"""
from __future__ import annotations

import builtins
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .aten import rules_by_op as aten_rules_by_op
from .attention import MatMulRule, MultiheadAttentionRule, PrunedMultiheadAttention, ScaledDotProductAttentionRule
from .base import AnalysisContext, GraphView, LayerKind, MacTerm, Rule, RuleTable, ShrinkContext, WeightedLayer
from .elementwise import BinaryRule, ElementwiseRule, NormaliseAlongRule, PadRule, ReduceRule, ShapeQueryRule, SpatialRule
from .families import family_rules
from .movement import MovementRule, RepeatInterleaveRule, ReshapeRule, RollRule, SplitRule, SqueezeRule
from .recurrent import PrunedGRU, PrunedLSTM, RecurrentRule
from .statistics import NormalisingStatisticRule

__all__ = ["AnalysisContext", "GraphView", "LayerKind", "MacTerm", "Rule", "RuleTable", "ShrinkContext", "WeightedLayer",
           "default_rules"]

T = torch.Tensor

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.Mish, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.Identity,
)
_ELEMENTWISE_FUNCTIONS = (
    F.relu, torch.relu, T.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, T.sigmoid, F.sigmoid, torch.tanh, T.tanh,
    F.tanh, F.hardswish, F.hardsigmoid, F.hardtanh, F.leaky_relu, F.elu, F.selu, F.mish, F.softplus, F.dropout,
    F.dropout1d, F.dropout2d, F.dropout3d, T.contiguous, T.clone, torch.clone, torch.exp, T.exp, torch.abs, T.abs,
    operator.neg, torch.neg, torch.sqrt, T.sqrt, torch.rsqrt, T.rsqrt, torch.reciprocal, T.reciprocal,
    T.to, T.float, T.double, T.half, T.bfloat16, T.type_as,  # casts: type_as(x, other) reads only other's dtype
)
_SOFTMAX = (nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax, T.softmax, T.log_softmax)
_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Upsample,
)
_SPATIAL_FUNCTIONS = (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.interpolate,
)
_REDUCE = (torch.amax, T.amax, torch.amin, T.amin)
_STATISTICS = (torch.mean, T.mean, torch.sum, T.sum)  # may be normalising statistics (statistics.py)
_NORMS = (torch.norm, T.norm, torch.linalg.vector_norm)  # (x, p/ord, dim, keepdim): a reduction over `dim`
_BINARY = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    torch.add, torch.sub, torch.mul, torch.div, T.add, T.sub, T.mul, T.div, torch.maximum, torch.minimum,
    torch.clamp, T.clamp, torch.clip, T.clip, torch.pow, T.pow, operator.pow,  # bounds/exponents may be tensors too
    torch.addcmul, T.addcmul, torch.addcdiv, T.addcdiv,
)
_MOVEMENT = (
    torch.cat, torch.concat, torch.concatenate, torch.stack, torch.flatten, T.flatten, torch.permute, T.permute, torch.transpose,
    T.transpose, torch.movedim, T.movedim, torch.unsqueeze, T.unsqueeze, F.pixel_shuffle, F.pixel_unshuffle,
    torch.channel_shuffle, T.repeat, torch.unbind, T.unbind, nn.Flatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
)
_RESHAPE = (T.view, T.reshape, torch.reshape, T.expand)
_SPLIT = (torch.split, T.split, torch.chunk, T.chunk)
_SQUEEZE = (torch.squeeze, T.squeeze)
_SHAPE_QUERIES = (T.size, builtins.getattr, T.dim, T.numel)


def default_rules() -> RuleTable:
    """The built-in rule table (a new immutable table each call: custom ops that a library registers when it is
    imported, such as transformers' grouped_mm, get their rules only once they exist)."""
    table: dict = {}

    def add(keys, rule: Rule) -> None:
        for key in keys:
            table[key] = rule

    table.update(family_rules())
    add(_ELEMENTWISE_MODULES + _ELEMENTWISE_FUNCTIONS, ElementwiseRule())
    add(_SOFTMAX, NormaliseAlongRule())
    add((F.normalize,), NormaliseAlongRule(dim_at=2, default_dim=1))
    add(_SPATIAL_MODULES + _SPATIAL_FUNCTIONS, SpatialRule())
    add((F.pad,), PadRule())
    add(_REDUCE, ReduceRule())
    add(_STATISTICS, NormalisingStatisticRule())
    add(_NORMS, NormalisingStatisticRule(dim_at=2, keepdim_at=3))
    add(_BINARY, BinaryRule())
    add(_MOVEMENT, MovementRule())
    add(_RESHAPE, ReshapeRule())
    add(_SPLIT, SplitRule())
    add((torch.repeat_interleave, T.repeat_interleave), RepeatInterleaveRule())
    add(_SQUEEZE, SqueezeRule())
    add((nn.MultiheadAttention, PrunedMultiheadAttention), MultiheadAttentionRule())
    add((nn.LSTM, nn.GRU, PrunedLSTM, PrunedGRU), RecurrentRule())
    add((operator.matmul, torch.matmul, T.matmul, torch.bmm, T.bmm, torch.mm, T.mm), MatMulRule())
    add((torch.roll, T.roll), RollRule())
    add((F.scaled_dot_product_attention,), ScaledDotProductAttentionRule())
    add(_SHAPE_QUERIES, ShapeQueryRule())
    table.update(aten_rules_by_op())  # the torch.export frontend's other Core ATen OpOverloads
    modules = {k: v for k, v in table.items() if isinstance(k, type) and issubclass(k, nn.Module)}
    functions = {k: v for k, v in table.items() if k not in modules}
    return RuleTable(modules, functions)
