"""Exact accounting: parameters by `numel`, MACs by a counter over the traced graph.

MACs are the multiply-accumulates of convolutions, transposed convolutions, linear
layers, matmuls, scaled_dot_product_attention (2 * numel(q) * keys) and multi-head
attention (projections, scores, weighted sum), for the example inputs as given (batch
included); element-wise ops, norms and pooling count 0. For an output y of a conv with
kernel k and groups G:  MACs = numel(y) * (C_in / G) * prod(k).  Linear: numel(y) * in.
matmul (..., n, k) @ (..., k, m): numel(y) * k.

Per group, "params removed" is measured by slicing the parameters' shapes group by
group, so a weight cut along both dims is counted once; parameters of modules that dead
code elimination removed are reported separately. The two add up to
`params_before - params_after`.
"""
from __future__ import annotations

import json
import math
import operator
from dataclasses import asdict, dataclass

import torch
import torch.fx as fx
import numpy as np
import torch.nn as nn

from typing import Mapping

from .groups import DependencyGraph, Role, Slot
from .planner import PrunePlan
from .rules.attention import PrunedMultiheadAttention
from .rules.recurrent import PrunedRecurrent, recurrent_mac_terms, recurrent_macs
from .trace import TensorMeta, value_meta

_CONVS = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d,
          torch.conv1d, torch.conv2d, torch.conv3d)
_MATMULS = (operator.matmul, torch.matmul, torch.bmm, torch.mm, torch.Tensor.matmul, torch.Tensor.bmm, torch.Tensor.mm)


def _numel(meta) -> int:
    return math.prod(meta.shape)


def node_macs(node: fx.Node, modules) -> int:
    """MACs of one node (0 for nodes that do no multiply-accumulate work)."""
    if node.op == "call_module":
        m = modules[node.target]
        out = value_meta(node)
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            x = value_meta(node.args[0])
            return _numel(x) * (m.out_channels // m.groups) * math.prod(m.kernel_size)
        if isinstance(m, nn.modules.conv._ConvNd):
            return _numel(out) * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        if isinstance(m, nn.Linear):
            return _numel(out) * m.in_features
        if isinstance(m, (nn.MultiheadAttention, PrunedMultiheadAttention)):
            return _attention_macs(node, m)
        if isinstance(m, (nn.LSTM, nn.GRU, PrunedRecurrent)) and isinstance(value_meta(node.args[0]), TensorMeta):
            return recurrent_macs(m, value_meta(node.args[0]).shape, m.batch_first)
        return 0
    target = node.target if node.op == "call_function" else getattr(torch.Tensor, node.target, None) if node.op == "call_method" else None
    if target in _MATMULS:
        a = value_meta(node.args[0])
        return _numel(value_meta(node)) * a.shape[-1]
    if target in _CONVS:  # functional conv: weight (C_out, C_in / G, k...)
        w = value_meta(node.args[1] if len(node.args) > 1 else node.kwargs["weight"])
        return _numel(value_meta(node)) * math.prod(w.shape[1:])
    if target is torch.nn.functional.scaled_dot_product_attention:  # scores q k^T and the weighted sum of v
        q, k = value_meta(node.args[0]), value_meta(node.args[1])
        return 2 * _numel(q) * k.shape[-2]
    if target is torch.nn.functional.linear:
        w = value_meta(node.args[1])
        return _numel(value_meta(node)) * w.shape[-1]
    return 0


def _attention_macs(node: fx.Node, m: nn.Module) -> int:
    """q/k/v projections + scores + weighted sum + output projection, from the weights' shapes."""
    q, k = value_meta(node.args[0]), value_meta(node.args[1])
    lq, lk = (q.shape[1], k.shape[1]) if m.batch_first else (q.shape[0], k.shape[0])
    n = _numel(q) // (lq * q.shape[-1])
    inner, e_in = m.in_proj_weight.shape[0] // 3, m.in_proj_weight.shape[1]
    e_out = m.out_proj.weight.shape[0]
    return n * ((lq + 2 * lk) * e_in * inner + 2 * lq * lk * inner + lq * inner * e_out)


def count_macs(gm: fx.GraphModule) -> int:
    """Total MACs of a GraphModule whose nodes carry recorded values."""
    modules = dict(gm.named_modules())
    return sum(node_macs(n, modules) for n in gm.graph.nodes if isinstance(value_meta(n), (TensorMeta, tuple)))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class GroupReport:
    id: str
    channels_before: int
    channels_after: int
    params_removed: int
    frozen_reasons: tuple[str, ...]
    round_step: int = 1  # the target's channel step for this group
    asked_before_rounding: int | None = None  # kept count the strategy asked for, if rounding applied


@dataclass(frozen=True)
class LayerReport:
    name: str
    params_before: int
    params_after: int


@dataclass(frozen=True)
class PruneReport:
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    groups: tuple[GroupReport, ...]
    layers: tuple[LayerReport, ...]
    params_removed_dead_code: int

    @property
    def frozen_groups(self) -> tuple[GroupReport, ...]:
        return tuple(g for g in self.groups if g.frozen_reasons)

    @property
    def prunable_channels(self) -> int:
        return sum(g.channels_before for g in self.groups if not g.frozen_reasons and g.channels_before > 1)

    @property
    def removed_channels(self) -> int:
        return sum(g.channels_before - g.channels_after for g in self.groups)

    def to_json(self) -> dict:
        return asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    def summary(self) -> str:
        def pct(a, b):
            return f"{100.0 * (b - a) / b:.1f}%" if b else "-"
        lines = [
            f"{'':12s}{'before':>16s}{'after':>16s}{'removed':>10s}",
            f"{'params':12s}{self.params_before:>16,d}{self.params_after:>16,d}{pct(self.params_after, self.params_before):>10s}",
            f"{'MACs':12s}{self.macs_before:>16,d}{self.macs_after:>16,d}{pct(self.macs_after, self.macs_before):>10s}",
            f"channel groups: {len(self.groups)}, pruned {sum(1 for g in self.groups if g.channels_after < g.channels_before)}, "
            f"frozen {len(self.frozen_groups)}; channels removed {self.removed_channels} of {self.prunable_channels} prunable",
        ]
        rounded = [g for g in self.groups if g.asked_before_rounding is not None and g.asked_before_rounding != g.channels_after]
        if rounded:
            lines.append(f"rounded to the target's channel steps: {len(rounded)} groups, "
                         + ", ".join(f"{g.id} {g.asked_before_rounding}->{g.channels_after}" for g in rounded[:4])
                         + (" ..." if len(rounded) > 4 else ""))
        return "\n".join(lines)


def _params_by_module(model: nn.Module) -> dict[str, int]:
    return {name: sum(p.numel() for p in m.parameters(recurse=False))
            for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}


@dataclass(frozen=True)
class MacTerm:
    """`macs` before pruning, scaling with the kept share of each slot in `factors` (exact for conv/linear/matmul)."""

    macs: int
    factors: tuple[Slot, ...]


def mac_terms(gm: fx.GraphModule, channel_dims: Mapping[str, object]) -> tuple[MacTerm, ...]:
    """The MACs of every node, each with the channel slots its cost is proportional to.

    Conv (groups 1) and linear: MACs = numel(out) * C_in * k, so they scale with the kept
    rows and columns of the weight; grouped/depthwise convs only with the rows. matmul:
    with its output channel dim and its contracted dim. Attention: projections with the
    embedding and inner widths, scores and weighted sum with the inner width.
    """
    modules = dict(gm.named_modules())
    terms = []
    for node in gm.graph.nodes:
        macs = node_macs(node, modules)
        if not macs:
            continue
        weight = f"{node.target}.weight" if node.op == "call_module" else None
        m = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            factors = (Slot(weight, 0, Role.CONSUMER), Slot(weight, 1, Role.PRODUCER))
        elif isinstance(m, nn.modules.conv._ConvNd):
            factors = (Slot(weight, 0, Role.PRODUCER),) + ((Slot(weight, 1, Role.CONSUMER),) if m.groups == 1 else ())
        elif isinstance(m, nn.Linear):
            factors = (Slot(weight, 0, Role.PRODUCER), Slot(weight, 1, Role.CONSUMER))
        elif isinstance(m, (nn.MultiheadAttention, PrunedMultiheadAttention)):
            e_in = Slot(f"{node.target}.in_proj_weight", 1, Role.CONSUMER)
            inner = Slot(f"{node.target}.out_proj.weight", 1, Role.CONSUMER)
            e_out = Slot(f"{node.target}.out_proj.weight", 0, Role.PRODUCER)
            q, k = value_meta(node.args[0]), value_meta(node.args[1])
            lq, lk = (q.shape[1], k.shape[1]) if m.batch_first else (q.shape[0], k.shape[0])
            n = _numel(q) // (lq * q.shape[-1])
            w_in, w_out = m.in_proj_weight.shape[1], m.out_proj.weight.shape[1]
            e_o = m.out_proj.weight.shape[0]
            terms += [MacTerm(n * (lq + 2 * lk) * w_in * w_out, (e_in, inner)), MacTerm(n * 2 * lq * lk * w_out, (inner,)),
                      MacTerm(n * lq * w_out * e_o, (inner, e_out))]
            continue
        elif isinstance(m, (nn.LSTM, nn.GRU, PrunedRecurrent)):
            terms += [MacTerm(n, f) for n, f in recurrent_mac_terms(node, m, value_meta(node.args[0]).shape)]
            continue
        else:
            factors = _matmul_factors(node, channel_dims)
        terms.append(MacTerm(macs, factors))
    return tuple(terms)


def _matmul_factors(node: fx.Node, channel_dims) -> tuple[Slot, ...]:
    factors = []
    out_dim = channel_dims.get(node.name)
    if isinstance(out_dim, int):
        factors.append(Slot(node.name, out_dim))
    if node.target in _MATMULS or (node.op == "call_method" and getattr(torch.Tensor, node.target, None) in _MATMULS):
        a = node.args[0]
        rank = len(value_meta(a).shape)
        if isinstance(a, fx.Node) and channel_dims.get(a.name) == rank - 1:
            factors.append(Slot(a.name, rank - 1))
    return tuple(factors)


@dataclass(frozen=True)
class ModelStats:
    """What the report needs of the unpruned model, measured once before the rewrite."""

    params: int
    macs: int
    params_by_module: dict
    param_shapes: dict
    mac_terms: tuple[MacTerm, ...]

    @classmethod
    def measure(cls, gm: fx.GraphModule, graph: DependencyGraph) -> "ModelStats":
        shapes = {name: tuple(p.shape) for name, p in gm.named_parameters(remove_duplicate=False)}
        return cls(count_params(gm), count_macs(gm), _params_by_module(gm), shapes, mac_terms(gm, graph.channel_dims))


def params_removed_by_group(before: ModelStats, graph: DependencyGraph, plan: PrunePlan) -> dict[str, int]:
    """Parameters each pruned group removes, slicing shapes group by group (a weight cut on two dims counts once)."""
    shapes = {name: list(shape) for name, shape in before.param_shapes.items()}
    removed = {}
    for g in graph.groups:
        kept = plan.keep.get(g.id)
        if kept is None:
            continue
        total = 0
        for slot in g.members:
            if not slot.is_param or slot.name not in shapes:
                continue  # activations and buffers hold no parameters
            n = math.prod(shapes[slot.name])
            shapes[slot.name][slot.dim] = len(g.kept_positions(slot, kept))
            total += n - math.prod(shapes[slot.name])
        removed[g.id] = total
    return removed


def kept_share(graph: DependencyGraph, plan: PrunePlan, slot: Slot) -> tuple[int, int] | None:
    """(positions kept, positions) of `slot` once `plan` is applied; None for a slot in no group."""
    g = graph.group_of(slot)
    if g is None:
        return None
    size = g.members[slot].size
    kept = plan.keep.get(g.id)
    return (size if kept is None else len(g.kept_positions(slot, kept))), size


def predict(before: ModelStats, graph: DependencyGraph, plan: PrunePlan) -> tuple[int, int]:
    """(params, MACs) the model will have once `plan` is applied, from shapes alone (no rewrite, no run)."""
    macs = 0
    for term in before.mac_terms:
        num, den = term.macs, 1
        for slot in term.factors:
            k, n = kept_share(graph, plan, slot) or (1, 1)
            num, den = num * k, den * n
        macs += num // den
    return before.params - sum(params_removed_by_group(before, graph, plan).values()), macs


def build_report(before: ModelStats, pruned: fx.GraphModule, graph: DependencyGraph, plan: PrunePlan,
                 sliced_params: int | None = None, rounding: Mapping | None = None) -> PruneReport:
    """Measure `pruned` against `before`. `sliced_params`: parameter count after slicing, before dead-code removal."""
    removed = params_removed_by_group(before, graph, plan)
    rounding = rounding or {}
    groups = []
    for g in graph.groups:
        kept = plan.keep.get(g.id)
        r = rounding.get(g.id)
        groups.append(GroupReport(g.id, g.size, len(kept) if kept is not None else g.size, removed.get(g.id, 0),
                                  g.frozen_reasons, r.step if r else 1, r.asked if r else None))
    if sliced_params is None:
        sliced_params = count_params(pruned)
    after = _params_by_module(pruned)
    layers = tuple(LayerReport(name, n, after.get(name, 0)) for name, n in before.params_by_module.items())
    return PruneReport(
        params_before=before.params,
        params_after=count_params(pruned),
        macs_before=before.macs,
        macs_after=count_macs(pruned),
        groups=tuple(groups),
        layers=layers,
        params_removed_dead_code=sliced_params - count_params(pruned),
    )


def channel_mac_cost(before: ModelStats, group) -> np.ndarray:
    """MACs that removing each channel of `group` alone would save (first order: other groups unpruned)."""
    cost = np.zeros(group.size)
    for term in before.mac_terms:
        for slot in term.factors:
            index_map = group.members.get(slot)
            if index_map is not None:
                cost += term.macs * np.bincount(index_map, minlength=group.size) / index_map.size
    return cost
