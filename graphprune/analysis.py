"""The analysis stage: one immutable value that explain, planning, rewriting, sensitivity and latency share.

    analyse(model, example_inputs) -> Analysis
        frontend   trace a copy of the model, record every node's value on the example inputs
        couple     the rules' `couple` halves -> DependencyGraph (channel groups, frozen ones with reasons)
        cost       the rules' `cost` halves -> CostModel (params and MACs as functions of kept channels)
        measure    ModelStats of the unpruned model
    Analysis.plan(budget, strategy, target, calibration) -> Planned   score, then plan (nothing is rewritten)
    Analysis.apply(plan) -> PruneResult                                 rewrite a copy, then measure the report
    Analysis.prune(...) == Analysis.apply(Analysis.plan(...))

Invariant: nothing after `analyse` mutates the traced GraphModule or the caller's model;
each `apply` rewrites its own copy, so one Analysis serves any number of plans (sensitivity
over N groups costs one trace).
"""
from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

import torch
import torch.fx as fx

from .cost import CostModel, Counts
from .dependencies import build_dependency_graph
from .errors import InputError
from .groups import DependencyGraph, Role
from .importance import ScoringContext, score_groups
from .inputs import check_model_and_inputs
from .options import Budget, Calibration, Scope, Strategy, check_ratio
from .passes import rewrite_in_place
from .planner import Planned, PrunePlan, plan_global, plan_local, producer_partitions
from .report import ModelStats, PruneReport, build_report
from .rules import GraphView, LayerKind, RuleTable, default_rules
from .targets import Target, resolve_target
from .trace import copy_graph_module, trace_with_values

_CALLS = ("call_module", "call_function", "call_method")


@dataclass(frozen=True)
class PruneResult:
    model: fx.GraphModule  # physically smaller; the caller's model is untouched
    plan: PrunePlan
    report: PruneReport
    graph: DependencyGraph
    timings: dict = field(default_factory=dict, compare=False)  # seconds per stage


@dataclass(frozen=True, eq=False)
class Analysis:
    """The traced model, its channel groups, its cost model and its measured totals. See the module docstring."""

    model: torch.nn.Module  # the caller's model: read for module names, never modified
    graph_module: fx.GraphModule  # traced copy with recorded values: never mutated by later stages
    example_inputs: tuple  # one value per placeholder of graph_module
    rules: RuleTable
    dependencies: DependencyGraph
    cost: CostModel
    stats: ModelStats
    layers: Mapping[str, LayerKind]  # weight parameter name -> kind of its conv/linear-like layer
    layer_inputs: frozenset[str]  # nodes read by those layers (what activation criteria look at)
    timings: Mapping[str, float] = field(default_factory=dict)

    # -- reading ---------------------------------------------------------------------------
    def explain(self) -> str:
        """The channel groups, their members and why any are frozen (what `graphprune explain` prints)."""
        graph = self.dependencies
        return (graph.describe() + f"\n\n{len(graph.groups)} groups: {len(graph.prunable)} prunable, "
                f"{len(graph.frozen)} frozen")

    def predict(self, plan: PrunePlan) -> Counts:
        """Params and MACs once `plan` is applied, from shapes alone; equal to what `apply` measures."""
        return self.cost.predict(self.dependencies, plan, self.stats.params)

    def module_names(self, entries: Iterable, what: str) -> list[str]:
        """Qualified names of modules of the model given as modules or names; InputError with close matches."""
        names = {m: n for n, m in self.model.named_modules()}
        all_names = [n for n in names.values() if n]
        out = []
        for entry in entries:
            if isinstance(entry, torch.nn.Module):
                if entry not in names:
                    raise InputError(f"{what} entry {type(entry).__name__} is not a submodule of the model; "
                                     "pass modules of the model itself or their qualified names")
                out.append(names[entry])
            elif isinstance(entry, str):
                if entry not in all_names:
                    close = difflib.get_close_matches(entry, all_names, n=3)
                    hint = f" Did you mean {', '.join(close)}?" if close else " Use names from model.named_modules()."
                    raise InputError(f"{what} entry {entry!r} names no module of the model.{hint}")
                out.append(entry)
            else:
                raise InputError(f"{what} entries must be modules or qualified names, got {type(entry).__name__}")
        return out

    def groups_produced_by(self, module_name: str) -> list[str]:
        """Ids of the groups whose channels the module (or one of its submodules) writes."""
        prefix = module_name + "."
        return [g.id for g in self.dependencies.groups
                if any(s.role is Role.PRODUCER and s.name.startswith(prefix) for s in g.members)]

    def with_ignored(self, modules: Iterable) -> "Analysis":
        """A copy whose groups written by `modules` (modules or qualified names) are frozen: their outputs are kept."""
        names = self.module_names(modules, "ignore")
        if not names:
            return self
        ids = [gid for name in names for gid in self.groups_produced_by(name)]
        return replace(self, dependencies=self.dependencies.with_frozen(ids, "output channels kept by `ignore`"))

    def group_ratios(self, ratio: float, overrides: Mapping[str, float]) -> dict[str, float]:
        """Per-group ratio: the default, overridden by group id or by the module that produces the group."""
        ratios = {g.id: ratio for g in self.dependencies.prunable}
        known = {g.id for g in self.dependencies.groups}
        by_module = {k: v for k, v in overrides.items() if k not in known}
        for name in sorted(self.module_names(by_module, "ratios"), key=len):  # longer (deeper) names win
            for gid in self.groups_produced_by(name):
                if gid in ratios:
                    ratios[gid] = check_ratio(by_module[name], f"ratios[{name!r}]")
        for key, value in overrides.items():
            if key in known and key in ratios:
                ratios[key] = check_ratio(value, f"ratios[{key!r}]")
        return ratios

    # -- planning --------------------------------------------------------------------------
    def scores(self, strategy: Strategy, calibration: Calibration = Calibration(), groups=None) -> dict:
        """The strategy's criterion on `groups` (default: every prunable group)."""
        ctx = ScoringContext(self.graph_module, self.dependencies, calibration.batches, calibration.loss_fn,
                             self.cost.channel_macs, self.layer_inputs)
        return score_groups(self.dependencies.prunable if groups is None else groups, strategy.criterion, ctx)

    def plan(self, budget: Budget, strategy: Strategy = Strategy(), target: str | Target = "auto",
             calibration: Calibration = Calibration()) -> Planned:
        """Score, then plan how many channels each group keeps and which (nothing is rewritten)."""
        target = resolve_target(target)
        graph = self.dependencies
        t0 = time.perf_counter()
        scores = self.scores(strategy, calibration)
        t1 = time.perf_counter()
        constraints = {g.id: target.constraints(g, self.layers) for g in graph.prunable}
        if strategy.scope is Scope.LOCAL:
            partitions = {g.id: producer_partitions(g) for g in graph.prunable}

            def make(r: float) -> Planned:
                return plan_local(graph, scores, self.group_ratios(r, strategy.ratios), constraints, strategy.min_keep,
                                  partitions, target.one_block)
        else:
            def make(r: float) -> Planned:
                return plan_global(graph, scores, r, constraints, strategy.min_keep, target.one_block)
        planned = budget.plan(make, self)
        return replace(planned, timings={"scoring": t1 - t0, "planning": time.perf_counter() - t1})

    # -- rewriting -------------------------------------------------------------------------
    def apply(self, plan: PrunePlan | Planned | str, calibration: Calibration = Calibration()) -> PruneResult:
        """Rewrite a copy of the traced model with `plan` (a PrunePlan, its JSON, or a Planned) and measure it.

        With `calibration.recalibrate_bn`, BatchNorm statistics are re-estimated on its batches.
        """
        planned = plan if isinstance(plan, Planned) else Planned(
            PrunePlan.from_json(plan) if isinstance(plan, str) else plan, {})
        planned.plan.validate(self.dependencies)
        gm = copy_graph_module(self.graph_module)
        recalibration = calibration.batches if calibration.recalibrate_bn else ()
        rewritten = rewrite_in_place(gm, self.dependencies, planned.plan, self.rules, self.example_inputs, recalibration)
        t0 = time.perf_counter()
        report = build_report(self.stats, self.cost, gm, self.rules, self.dependencies, planned.plan,
                              rewritten.sliced_params, planned.rounding)
        timings = {**self.timings, **planned.timings, **rewritten.timings, "report": time.perf_counter() - t0}
        return PruneResult(gm, planned.plan, report, self.dependencies, timings)

    def prune(self, budget: Budget, strategy: Strategy = Strategy(), target: str | Target = "auto",
              calibration: Calibration = Calibration()) -> PruneResult:
        """plan, then apply."""
        return self.apply(self.plan(budget, strategy, target, calibration), calibration)


def _weighted_layers(gm: fx.GraphModule, rules: RuleTable, graph: DependencyGraph):
    """(weight name -> layer kind, names of the nodes those layers read), from the rules' `weighted_layer`."""
    view = GraphView(gm, graph.channel_dims)
    layers, inputs = {}, set()
    for node in gm.graph.nodes:
        rule = rules.for_node(node, view.modules) if node.op in _CALLS else None
        layer = rule.weighted_layer(node, view) if rule is not None else None
        if layer is not None:
            layers.update((w, layer.kind) for w in layer.weights)
            inputs.update(a.name for a in node.all_input_nodes if a.op != "get_attr")
    return layers, frozenset(inputs)


def analyse(model: torch.nn.Module, example_inputs, *, example_kwargs: Mapping | None = None,
            rules: RuleTable | None = None, strict: bool = False) -> Analysis:
    """Trace a copy of `model`, find its channel groups and its cost model, measure it (see the module docstring).

    `example_inputs`: a tensor or a tuple of the forward's positional arguments; `example_kwargs`
    its keyword arguments (arguments with defaults may be left out). With `strict=True` an op
    without a rule raises UnsupportedOpError and a failing rule raises RuleError, instead of
    freezing the channels they touch.
    """
    args = check_model_and_inputs(model, example_inputs)
    rules = rules or default_rules()
    t0 = time.perf_counter()
    gm, inputs = trace_with_values(model, args, example_kwargs, rules.has_module_rule)
    t1 = time.perf_counter()
    graph = build_dependency_graph(gm, rules, strict=strict)
    cost = CostModel.of(gm, rules, graph)
    layers, layer_inputs = _weighted_layers(gm, rules, graph)
    stats = ModelStats.measure(gm, rules)
    t2 = time.perf_counter()
    return Analysis(model, gm, inputs, rules, graph, cost, stats, layers, layer_inputs,
                    {"trace": t1 - t0, "analysis": t2 - t1})
