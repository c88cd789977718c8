"""Exact accounting after the rewrite: parameters by `numel`, MACs by the rules' cost formulas.

MACs are those of convolutions, transposed convolutions, linear layers, matmuls,
scaled_dot_product_attention and multi-head attention (each rule's `cost`), for the
example inputs as given (batch included); element-wise ops, norms and pooling count 0.
Per group, "params removed" slices the parameters' shapes group by group (see
cost.CostModel); parameters of modules that dead-code elimination removed are reported
separately. The two add up to `params_before - params_after`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Mapping

import torch.fx as fx
import torch.nn as nn

from .cost import CostModel, count_macs
from .groups import DependencyGraph, Pin, Slot
from .kvcache import AttentionLayer, attention_layers, query_tokens
from .moduletree import tree_tables
from .planner import PrunePlan, Rounding
from .passes.shrink import positions_kept_by_slot
from .rules import GraphView, RuleTable
from .rules.base import describe_node


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
    one_block_floor: bool = False  # a layer kept one block (the target's floor) although that keeps more than asked
    off_step_layers: int = 0  # layers left narrower than one step: raising them would keep more than asked
    pins: tuple[Pin, ...] = ()  # channels kept by freezes that reach only part of the group (ChannelGroup.pins)

    @property
    def pinned_channels(self) -> int:
        return len({c for p in self.pins for c in p.channels})


@dataclass(frozen=True)
class LayerReport:
    name: str
    params_before: int
    params_after: int


@dataclass(frozen=True)
class AttentionReport:
    """One attention op before/after: query heads, cached KV heads, head_dim, KV-cache bytes per token."""

    name: str
    query_heads_before: int
    query_heads_after: int
    kv_heads_before: int
    kv_heads_after: int
    head_dim: int
    kv_bytes_per_token_before: int
    kv_bytes_per_token_after: int


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass(frozen=True)
class PruneReport:
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    groups: tuple[GroupReport, ...]
    layers: tuple[LayerReport, ...]
    params_removed_dead_code: int  # includes parameters the traced graph never reads (unused_modules)
    frontend: str = "fx"  # which frontend traced the model, and why
    target: str = ""  # the resolved deployment target whose channel steps were applied (e.g. ort-x86/avx512)
    unused_modules: tuple[str, ...] = ()  # modules with parameters the traced graph never reads (aux heads)
    probed_ops: tuple[str, ...] = ()  # ops without a rule that probing showed to be channel-wise
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    tokens: int = 0  # tokens in the example inputs (batch x sequence at the first attention); 0 without attention
    attention: tuple[AttentionReport, ...] = ()  # per attention layer, measured from the k/v entering attention
    recovery: dict | None = None  # fidelity to the dense model before/after graphprune.recover (Fidelity.to_json)
    renormalised: tuple[str, ...] = ()  # ops whose statistic over the channels now spans only the kept ones (not exact)

    @property
    def kv_bytes_per_token_before(self) -> int:
        return sum(a.kv_bytes_per_token_before for a in self.attention)

    @property
    def kv_bytes_per_token_after(self) -> int:
        return sum(a.kv_bytes_per_token_after for a in self.attention)

    @property
    def macs_per_token_before(self) -> float:
        return self.macs_before / self.tokens if self.tokens else 0.0

    @property
    def macs_per_token_after(self) -> float:
        return self.macs_after / self.tokens if self.tokens else 0.0

    @property
    def frozen_groups(self) -> tuple[GroupReport, ...]:
        return tuple(g for g in self.groups if g.frozen_reasons)

    @property
    def partly_frozen_groups(self) -> tuple[GroupReport, ...]:
        """Groups of which some channels are pinned (kept by a freeze) and the rest were prunable."""
        return tuple(g for g in self.groups if g.pins and not g.frozen_reasons)

    @property
    def prunable_channels(self) -> int:
        return sum(g.channels_before - g.pinned_channels for g in self.groups
                   if not g.frozen_reasons and g.channels_before > 1)

    @property
    def removed_channels(self) -> int:
        return sum(g.channels_before - g.channels_after for g in self.groups)

    def to_json(self) -> dict:
        return asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    def _per_token_lines(self, pct) -> list[str]:
        """Transformer lines: weight bytes, MACs and KV-cache bytes per token, heads kept per attention layer."""
        if not self.tokens:
            return []
        lines = [
            f"{'weight B':12s}{self.weight_bytes_before:>16,d}{self.weight_bytes_after:>16,d}"
            f"{pct(self.weight_bytes_after, self.weight_bytes_before):>10s}",
            f"{'MACs/token':12s}{self.macs_per_token_before:>16,.0f}{self.macs_per_token_after:>16,.0f}"
            f"{pct(self.macs_per_token_after, self.macs_per_token_before):>10s}",
            f"{'KV B/token':12s}{self.kv_bytes_per_token_before:>16,d}{self.kv_bytes_per_token_after:>16,d}"
            f"{pct(self.kv_bytes_per_token_after, self.kv_bytes_per_token_before):>10s}",
        ]
        if self.attention:
            lines.append(f"attention layers: {len(self.attention)}; query/KV heads kept: "
                         + ", ".join(f"{a.query_heads_after}/{a.kv_heads_after}" for a in self.attention)
                         + f" (of {self.attention[0].query_heads_before}/{self.attention[0].kv_heads_before}; "
                         "head_dim kept whole)")
        return lines

    def summary(self, full: bool = False) -> str:
        """Totals, groups and roundings; `full` lists every rounding (otherwise the first four)."""
        def pct(a, b):
            return f"{100.0 * (b - a) / b:.1f}%" if b else "-"
        lines = [
            f"{'':12s}{'before':>16s}{'after':>16s}{'removed':>10s}",
            f"{'params':12s}{self.params_before:>16,d}{self.params_after:>16,d}{pct(self.params_after, self.params_before):>10s}",
            f"{'MACs':12s}{self.macs_before:>16,d}{self.macs_after:>16,d}{pct(self.macs_after, self.macs_before):>10s}",
        ]
        lines += self._per_token_lines(pct)
        lines += [
            f"channel groups: {len(self.groups)}, pruned {sum(1 for g in self.groups if g.channels_after < g.channels_before)}, "
            f"frozen {len(self.frozen_groups)}; channels removed {self.removed_channels} of {self.prunable_channels} prunable",
        ]
        lines += self._pin_lines(full)
        if self.probed_ops:
            lines.append(f"probed (no rule; shown channel-wise on the example inputs): {'; '.join(self.probed_ops)}")
        if self.renormalised:
            lines.append(f"not exact, valid (statistics over the kept channels, as LayerNorm's): {'; '.join(self.renormalised)}")
        if self.params_removed_dead_code:
            lines.append(f"dead code removed: {self.params_removed_dead_code:,} params"
                         + (f" (never read by the model: {', '.join(self.unused_modules)})" if self.unused_modules else ""))
        lines += self._rounding_lines(full)
        if self.recovery:
            lines.append(self._recovery_line())
        return "\n".join(lines)

    def _rounding_lines(self, full: bool) -> list[str]:
        """The groups rounding changed (asked -> kept) and those left off their step (the first four unless `full`)."""
        target = self.target or "?"
        rounded = [g for g in self.groups if g.asked_before_rounding is not None and g.asked_before_rounding != g.channels_after]
        off_step = [g for g in self.groups if g.off_step_layers]
        lines = []
        if rounded:
            lines.append(f"rounded to the channel steps of target {target}: {len(rounded)} groups, asked -> kept: "
                         + _listed(rounded, full, lambda g: f"{g.id} {g.asked_before_rounding}->{g.channels_after}"
                                   + (" (one-block floor)" if g.one_block_floor else "")))
        if off_step:
            lines.append(f"off the channel steps of target {target}: {len(off_step)} groups keep a layer whose width is "
                         "not a multiple of its step (rounding it would break the budget or the group's floor): "
                         + _listed(off_step, full, lambda g: f"{g.id} ({g.channels_after} kept, step {g.round_step})"))
        if self.target and not rounded and not off_step:
            lines.append(f"target {self.target}: no group needed rounding")
        return lines

    def _pin_lines(self, full: bool) -> list[str]:
        """One line per partly frozen group (the first four unless `full`): its pinned channels and why."""
        partly = self.partly_frozen_groups
        shown = partly if full else partly[:4]
        lines = [f"partly frozen: group {g.id} ({g.channels_before} -> {g.channels_after} channels) "
                 + "; ".join(str(p) for p in g.pins) for g in shown]
        if len(shown) < len(partly):
            lines.append(f"partly frozen: {len(partly) - len(shown)} more groups (summary(full=True) lists all)")
        return lines

    def _recovery_line(self) -> str:
        before, after = self.recovery["before"], self.recovery["after"]
        line = (f"fidelity to the dense model, before -> after recovery: top-1 agreement "
                f"{before['top1_agreement']:.4f} -> {after['top1_agreement']:.4f}, cosine {before['cosine']:.4f} -> "
                f"{after['cosine']:.4f}, KL {before['kl']:.4g} -> {after['kl']:.4g}")
        if after.get("accuracy") is not None:
            line += f", accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f} (dense {after['dense_accuracy']:.4f})"
        return line


def _listed(groups: list, full: bool, describe) -> str:
    """`describe` of each group, the first four unless `full`, and how many more there are."""
    shown = groups if full else groups[:4]
    more = f", and {len(groups) - len(shown)} more (summary(full=True) lists all)" if len(shown) < len(groups) else ""
    return ", ".join(describe(g) for g in shown) + more


def _params_by_module(modules: Mapping[str, nn.Module]) -> dict[str, int]:
    """Module name -> numel of its own parameters (`m.parameters(recurse=False)`: each tensor once), for the modules
    of a tree (`dict(model.named_modules())`) that have any."""
    own = ((name, {id(p): p for p in m._parameters.values() if p is not None}) for name, m in modules.items())
    return {name: sum(p.numel() for p in params.values()) for name, params in own if params}


@dataclass(frozen=True)
class ModelStats:
    """The unpruned model's measured totals, taken once before any rewrite.

    `params` counts the caller's whole model; `params_unused` of them sit in `unused_modules`,
    modules the traced graph never reads (auxiliary heads that eval mode skips).
    """

    params: int
    macs: int
    params_by_module: Mapping[str, int]
    params_unused: int = 0
    unused_modules: tuple[str, ...] = ()
    weight_bytes: int = 0
    tokens: int = 0
    attention: tuple[AttentionLayer, ...] = ()

    @classmethod
    def measure(cls, gm: fx.GraphModule, cost: CostModel, model: nn.Module | None = None,
                traced: Mapping[str, object] | None = None) -> "ModelStats":
        """Totals of `model` (default: `gm`); MACs are the cost model's terms at full width (counted once).
        `traced`: `gm`'s parameters by every name (named_parameters(remove_duplicate=False)) where the caller has them."""
        model = model if isinstance(model, nn.Module) else gm
        tables = tree_tables(model)
        traced = tree_tables(gm).params if traced is None else traced
        named = list(tables.params.items())
        read = {id(p) for name, p in named if name in traced}
        unused = [(name, p) for name, p in named if id(p) not in read]
        params_unused = sum(p.numel() for p in {id(p): p for _, p in unused}.values())
        owners = sorted({name.rpartition(".")[0] or "(model)" for name, _ in unused})
        unique = {id(p): p for _, p in named}.values()  # model.parameters(): each tensor once
        return cls(sum(p.numel() for p in unique), cost.macs, _params_by_module(tables.modules), params_unused,
                   tuple(owners), sum(p.numel() * p.element_size() for p in unique), query_tokens(gm),
                   attention_layers(gm))


def build_report(before: ModelStats, cost: CostModel, pruned: fx.GraphModule, rules: RuleTable, graph: DependencyGraph,
                 plan: PrunePlan, sliced_params: int, rounding: Mapping[str, Rounding] | None = None) -> PruneReport:
    """Measure `pruned` against `before`. `sliced_params`: parameter count after slicing, before dead-code removal."""
    removed = cost.params_removed_by_group(graph, plan)
    rounding = rounding or {}
    groups = []
    for g in graph.groups:
        kept = plan.keep.get(g.id)
        r = rounding.get(g.id)
        groups.append(GroupReport(g.id, g.size, len(kept) if kept is not None else g.size, removed.get(g.id, 0),
                                  g.frozen_reasons, r.step if r else 1, r.asked if r else None,
                                  r.one_block if r else False, r.off_step if r else 0, g.pins))
    view = GraphView(pruned)  # one walk of the pruned tree for the MACs and the totals
    after = _params_by_module(view.modules)
    layers = tuple(LayerReport(name, n, after.get(name, 0)) for name, n in before.params_by_module.items())
    unique = {id(p): p for p in view.params.values()}.values()  # pruned.parameters(): each tensor once
    params_after = sum(p.numel() for p in unique)
    return PruneReport(
        params_before=before.params,
        params_after=params_after,
        macs_before=before.macs,
        macs_after=count_macs(pruned, rules, view),
        groups=tuple(groups),
        layers=layers,
        params_removed_dead_code=sliced_params - params_after + before.params_unused,
        unused_modules=before.unused_modules,
        weight_bytes_before=before.weight_bytes,
        weight_bytes_after=sum(p.numel() * p.element_size() for p in unique),
        tokens=before.tokens,
        attention=_attention_reports(before.attention, attention_layers(pruned)),
    )


def _attention_reports(before: tuple[AttentionLayer, ...], after: tuple[AttentionLayer, ...]) -> tuple[AttentionReport, ...]:
    """Attention layers before and after, paired in graph order (a rewrite never adds or removes attention)."""
    if len(before) != len(after):
        return ()
    return tuple(AttentionReport(b.node, b.query_heads, a.query_heads, b.key.heads, a.key.heads, b.key.head_dim,
                                 b.bytes_per_token, a.bytes_per_token) for b, a in zip(before, after))


def renormalised_ops(dense: fx.GraphModule, rules: RuleTable, graph: DependencyGraph, plan: PrunePlan,
                     kept: Mapping[Slot, object] | None = None, tables: GraphView | None = None) -> tuple[str, ...]:
    """The ops of `dense` whose rule `renormalises` over the channels of an input that `plan` prunes: the pruned model
    takes their statistic over the kept channels only (valid, not exact: rules.statistics states the policy).
    `kept`: positions_kept_by_slot(graph, plan) where the caller has it already; `tables`: GraphView's."""
    kept = positions_kept_by_slot(graph, plan) if kept is None else kept
    shrinking = {(s.name, s.dim) for s in kept if not s.is_param}
    view = GraphView(dense, graph.channel_dims, tables)
    found = []
    for node in dense.graph.nodes:
        rule = rules.for_node(node, view.modules)
        x = node.args[0] if rule is not None and node.args else None
        if isinstance(x, fx.Node) and (x.name, view.channel_dim(x)) in shrinking and rule.renormalises(node, view):
            found.append(describe_node(node, view.modules))
    return tuple(found)
