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
import gc
import functools
import enum
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx

from .cost import CostModel, Counts
from .dependencies import build_dependency_graph, rule_errors_raise
from .agreement import call_inputs
from .eager import rebuild_module
from .errors import InputError, RewriteError, RuleError, TraceError
from .batch import batch_dim
from .frontends import export_graph, export_program, exported_graph, flat_inputs
from .groups import DependencyGraph, Role
from .importance import ScoringContext, score_groups
from .inputs import check_model_and_inputs
from .options import Budget, Calibration, ModelCounts, Scope, Strategy, check_ratio
from .passes import rewrite_in_place
from .probing import ChannelProbe
from .planner import Planned, PrunePlan, plan_global, plan_local, producer_partitions
from .report import ModelStats, PruneReport, build_report, renormalised_ops
from .rules import GraphView, RuleTable, WeightedLayer, default_rules
from .rules.base import describe_node
from .kvcache import cache_off, check_no_kv_cache, predict_kv_bytes
from .rules.conv import GroupedConv, with_grouped_convs
from .rules.transformer import GroupedQuery, RepeatKVRule
from .runtimes.profiles import resolve_target
from .targets import Target
from .standins import record_shapes
from .copies import copy_graph_module
from .trace import trace_with_values



@dataclass(frozen=True)
class PruneResult:
    model: fx.GraphModule  # physically smaller; the caller's model is untouched
    plan: PrunePlan
    report: PruneReport
    graph: DependencyGraph
    timings: dict = field(default_factory=dict, compare=False)  # seconds per stage
    example_inputs: tuple = field(default=(), compare=False)  # one value per placeholder of `model`
    source: torch.nn.Module | None = field(default=None, compare=False, repr=False)  # the caller's model (read only)
    dense: fx.GraphModule | None = field(default=None, compare=False, repr=False)  # the analysed dense graph (read
    # only; with the fx frontend its parameters are views of `source`'s): the teacher of recovery, node for node
    rules: RuleTable | None = field(default=None, compare=False, repr=False)  # the table the graph was analysed with

    @cached_property
    def module(self) -> torch.nn.Module:
        """The caller's own class, pruned: a copy with sliced tensors and updated attributes (and Hugging Face
        config), verified to give the outputs of `model` on the example inputs. Raises EagerRebuildError (a
        GraphPruneError) naming why, e.g. the line of the caller's code that bakes a size; `model` and
        `exported` remain the fallback. See graphprune.eager."""
        return rebuild_module(self.source, self.model, self.example_inputs, self.rules)

    @cached_property
    def exported(self) -> torch.export.ExportedProgram:
        """The pruned model as a torch.export ExportedProgram (for .pt2, ExecuTorch, the dynamo ONNX exporter),
        its batch dim dynamic where `model` takes any batch size (frontends.dynamic_batch.export_program)."""
        model = self.model.eval() if not self.model.training else self.model
        args, kwargs = call_inputs(model, self.example_inputs, self.source)  # called as the caller's forward is
        try:
            if batch_dim(model).static:
                return torch.export.export(model, args, kwargs, strict=False)
            return export_program(model, args, kwargs)[0]
        except Exception as exc:
            raise TraceError(f"torch.export cannot export the pruned model: {type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc


class Frontend(enum.Enum):
    """How a model becomes a graph. FX: torch.fx symbolic trace, modules with a rule kept whole (fastest).
    EXPORT: torch.export to Core ATen (any spelling, Python control flow on shapes, Hugging Face models).
    AUTO: fx; export when fx cannot trace, or when fx meets ops without a rule and export leaves more
    channels prunable. Both keep the batch dim dynamic where the model allows it; where export cannot,
    `Analysis.frontend` reads "export (batch dim static: why)"."""

    AUTO = "auto"
    FX = "fx"
    EXPORT = "export"


@dataclass(frozen=True, eq=False)
class Analysis:
    """The traced model, its channel groups, its cost model and its measured totals. See the module docstring."""

    model: torch.nn.Module  # the caller's model: read for module names, never modified
    graph_module: fx.GraphModule  # traced copy with recorded values: never mutated by later stages (fx frontend:
    # own modules and buffers, parameters that view the caller's; trace.trace_with_values)
    example_inputs: tuple  # one value per placeholder of graph_module
    rules: RuleTable
    dependencies: DependencyGraph
    cost: CostModel
    stats: ModelStats
    layers: Mapping[str, WeightedLayer]  # weight parameter name -> its conv/linear-like layer (rules' weighted_layer)
    layer_inputs: frozenset[str]  # nodes read by those layers (what activation criteria look at)
    kernel_steps: Mapping[str, int]  # weight -> channel multiple its op needs to run (WeightedLayer.step > 1)
    frontend: str = "fx"  # which frontend traced the model, and why (Frontend docstring)
    timings: Mapping[str, float] = field(default_factory=dict)
    strict: bool = False  # analyse(strict=True): a rule whose shrink breaks a rewrite raises RuleError in `apply`
    tables: GraphView | None = field(default=None, compare=False, repr=False)  # graph_module's module, parameter
    # and buffer tables (GraphView's `tables`), walked once by the analysis and read again by `apply`'s report
    analysed_with: Mapping[str, str] = field(default_factory=dict)  # analyse's `grouped_convs` and `gqa` where given,
    # as values: every plan `apply` applies records them (PrunePlan.analysed_with)

    # -- reading ---------------------------------------------------------------------------
    def explain(self) -> str:
        """The channel groups, their members and why any are frozen (what `graphprune explain` prints)."""
        graph = self.dependencies
        probed = "".join(f"\nprobed: {p}" for p in graph.probed)
        partly = sum(1 for g in graph.prunable if g.pins)
        return (graph.describe() + probed + f"\n\n{len(graph.groups)} groups: {len(graph.prunable)} prunable"
                + (f" ({partly} partly frozen: their pinned channels are kept)" if partly else "")
                + f", {len(graph.frozen)} frozen (frontend {self.frontend})")

    def predict(self, plan: PrunePlan) -> Counts:
        """Params and MACs once `plan` is applied, from shapes alone; equal to what `apply` measures."""
        return self.cost.predict(self.dependencies, plan, self.stats.params - self.stats.params_unused)

    def counts(self) -> ModelCounts:
        """The counts a budget reads: totals of the unpruned model and predictors of a plan's (shapes only)."""
        attention = self.stats.attention
        kv_bytes = sum(layer.bytes_per_token for layer in attention) if attention else None
        return ModelCounts(self.stats.params, self.stats.macs, kv_bytes, self.predict,
                           lambda plan: predict_kv_bytes(attention, self.dependencies, plan))

    def module_names(self, entries: Iterable, what: str) -> list[str]:
        """Qualified names of modules of the model given as modules or names; InputError with close matches."""
        entries = list(entries)
        if not entries:
            return []
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

    def channels_produced_by(self, module_name: str) -> dict[str, list[np.ndarray]]:
        """Group id -> the index maps (position -> group channel) of the slots the module (or one of its
        submodules) writes, for every group it writes."""
        prefix = module_name + "."
        out: dict[str, list[np.ndarray]] = {}
        for g in self.dependencies.groups:
            maps = [m for s, m in g.members.items() if s.role is Role.PRODUCER and s.name.startswith(prefix)]
            if maps:
                out[g.id] = maps
        return out

    def groups_produced_by(self, module_name: str) -> list[str]:
        """Ids of the groups whose channels the module (or one of its submodules) writes."""
        return list(self.channels_produced_by(module_name))

    def _check_groups_named(self, by_group: Mapping[str, object], what: str) -> None:
        """InputError unless every key of `by_group` is a group id of this model."""
        known = {g.id for g in self.dependencies.groups}
        unknown = sorted(set(by_group) - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(known), n=3)
            raise InputError(f"{what} names group {unknown[0]!r}, which this model does not have"
                             + (f" (close: {', '.join(close)})" if close else "")
                             + "; use the ids of analyse(model, inputs).dependencies.groups")

    def with_ignored(self, modules: Iterable) -> "Analysis":
        """A copy that keeps the output channels of `modules` (modules or qualified names): the group channels
        they write are pinned, the rest of each group (e.g. the other inputs of a concat) stays prunable."""
        channels: dict[str, list[np.ndarray]] = {}
        for name in self.module_names(modules, "ignore"):
            for gid, maps in self.channels_produced_by(name).items():
                channels.setdefault(gid, []).extend(maps)
        if not channels:
            return self
        written = {gid: np.concatenate(maps) for gid, maps in channels.items()}
        return replace(self, dependencies=self.dependencies.with_pinned(written, "output channels kept by `ignore`"))

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
                             self.cost.channel_macs, self.layer_inputs, self.tables.params if self.tables is not None else None)
        return score_groups(self.dependencies.prunable if groups is None else groups, strategy.criterion, ctx)

    def plan(self, budget: Budget, strategy: Strategy = Strategy(), target: str | Target = "auto",
             calibration: Calibration = Calibration()) -> Planned:
        """Score, then plan how many channels each group keeps and which (nothing is rewritten).

        A target name is resolved here (runtimes.profiles.resolve_target: "auto" may read this machine's
        measured profile); the plan carries the resolved Target's name, and so does the report."""
        target = resolve_target(target)
        graph = self.dependencies
        self._check_groups_named(strategy.channel_costs, "channel_costs")
        t0 = time.perf_counter()
        scores = self.scores(strategy, calibration)
        t1 = time.perf_counter()
        constraints = {g.id: target.constraints(g, self.layers, self.kernel_steps) for g in graph.prunable}
        if strategy.scope is Scope.LOCAL:
            partitions = {g.id: producer_partitions(g) for g in graph.prunable}

            def make(r: float) -> Planned:
                return plan_local(graph, scores, self.group_ratios(r, strategy.ratios), constraints, strategy.min_keep,
                                  partitions, target.one_block)
        else:
            def make(r: float) -> Planned:
                return plan_global(graph, scores, r, constraints, strategy.min_keep, target.one_block,
                                   strategy.uniform_layers, strategy.channel_costs)
        planned = budget.plan(make, self.counts())
        return replace(planned, timings={"scoring": t1 - t0, "planning": time.perf_counter() - t1}, target=target.name)

    # -- rewriting -------------------------------------------------------------------------
    def apply(self, plan: PrunePlan | Planned | str, calibration: Calibration = Calibration()) -> PruneResult:
        """Rewrite a copy of the traced model with `plan` (a PrunePlan, its JSON, or a Planned) and measure it.

        With `calibration.recalibrate_bn`, BatchNorm statistics are re-estimated on its batches. A rewrite
        that breaks the model's check freezes the groups that break it and retries; with `strict` it raises
        RuleError naming the rule and the node instead (GRAPHPRUNE_RULE_ERRORS=raise, which makes failing
        `couple` halves raise, does not change this).
        """
        planned = plan if isinstance(plan, Planned) else Planned(
            PrunePlan.from_json(plan) if isinstance(plan, str) else plan, {})
        planned.plan.validate(self.dependencies)
        recalibration = calibration.batches if calibration.recalibrate_bn else ()
        try:
            gm, rewritten = self._rewritten(planned.plan, recalibration)
        except RewriteError as exc:
            if self.strict:
                rule_error = self._rule_error(exc)
                if rule_error is None:
                    raise  # no rule covers the node where it failed: the RewriteError names the pass
                raise rule_error from exc
            if not planned.plan.keep:
                raise  # nothing left to freeze: the rewrite fails with nothing pruned
            safer = self._without_groups_that_break(planned, exc)
            return safer.apply(safer.unfrozen_part(planned), calibration)
        t0 = time.perf_counter()
        report = build_report(self.stats, self.cost, gm, self.rules, self.dependencies, planned.plan,
                              rewritten.sliced_params, planned.rounding)
        report = replace(report, frontend=self.frontend, target=planned.target, probed_ops=self.dependencies.probed,
                         renormalised=renormalised_ops(self.graph_module, self.rules, self.dependencies, planned.plan,
                                                      rewritten.kept, self.tables))
        timings = {**self.timings, **planned.timings, **rewritten.timings, "report": time.perf_counter() - t0}
        applied = replace(planned.plan, analysed_with=dict(self.analysed_with))  # how a replay analyses the model
        return PruneResult(gm, applied, report, self.dependencies, timings, self.example_inputs, self.model,
                           self.graph_module, self.rules)

    def _rewritten(self, plan: PrunePlan, recalibration: Sequence[tuple] = ()):
        gm = copy_graph_module(self.graph_module, share_tensors=True, compiled=False)  # the rewrite recompiles
        return gm, rewrite_in_place(gm, self.dependencies, plan, self.rules, self.example_inputs, recalibration,
                                    shared_with=self.graph_module)

    def _rule_error(self, error: RewriteError) -> RuleError | None:
        """A RuleError naming the rule of the node where `error`'s rewrite failed; None when no rule covers it."""
        node = next((n for n in self.graph_module.graph.nodes if n.name == error.node), None)
        modules = dict(self.graph_module.named_modules())
        rule = self.rules.for_node(node, modules) if node is not None else None
        if rule is None:
            return None
        return RuleError(f"rule {type(rule).__name__} broke the rewrite of {describe_node(node, modules)}: "
                         f"{' '.join(str(error).split())}")

    def _without_groups_that_break(self, planned: Planned, error: RewriteError) -> "Analysis":
        """A copy in which every group whose rewrite alone breaks the model's check is frozen, with the error.

        Never fail where we can freeze: a rule that rewrites a group wrongly costs that group's
        compression, not the run. If no group breaks alone, every pruned group is frozen.
        """
        def breaks(gid: str) -> bool:
            try:
                self._rewritten(PrunePlan({gid: planned.plan.keep[gid]}, {gid: planned.plan.sizes[gid]}))
            except RewriteError:
                return True
            return False

        failing = [gid for gid in planned.plan.keep if breaks(gid)] or list(planned.plan.keep)
        at = f" at `{error.node}`" if error.node else ""
        reason = f"rewriting it broke the model's check{at} ({' '.join(str(error).split())[:300]})"
        return replace(self, dependencies=self.dependencies.with_frozen(failing, reason))

    def unfrozen_part(self, planned: Planned) -> Planned:
        """`planned` without the groups that are frozen in this analysis."""
        frozen = {g.id for g in self.dependencies.frozen}
        plan = PrunePlan({g: k for g, k in planned.plan.keep.items() if g not in frozen},
                         {g: n for g, n in planned.plan.sizes.items() if g not in frozen})
        return replace(planned, plan=plan, rounding={g: r for g, r in planned.rounding.items() if g not in frozen})

    def prune(self, budget: Budget, strategy: Strategy = Strategy(), target: str | Target = "auto",
              calibration: Calibration = Calibration()) -> PruneResult:
        """plan, then apply."""
        return self.apply(self.plan(budget, strategy, target, calibration), calibration)


def _weighted_layers(gm: fx.GraphModule, rules: RuleTable, graph: DependencyGraph, tables: GraphView | None = None):
    """(weight name -> its layer, names of the nodes those layers read, weight name -> kernel step > 1), from
    the rules' `weighted_layer`."""
    view = GraphView(gm, graph.channel_dims, tables)
    layers, inputs, steps = {}, set(), {}
    for node in gm.graph.nodes:
        rule = rules.for_node(node, view.modules)
        layer = rule.weighted_layer(node, view) if rule is not None else None
        if layer is not None:
            layers.update((w, layer) for w in layer.weights)
            inputs.update(a.name for a in node.all_input_nodes if a.op != "get_attr")
            if layer.step > 1:
                steps.update((w, max(layer.step, steps.get(w, 1))) for w in layer.weights)
    return layers, frozenset(inputs), steps


def _analysed(gm: fx.GraphModule, inputs: tuple, model, rules: RuleTable, strict: bool, frontend: str,
              trace_seconds: float) -> Analysis:
    t0 = time.perf_counter()
    tables = GraphView(gm)  # the module, parameter and buffer tables every step below reads (none modifies gm)
    graph = build_dependency_graph(gm, rules, strict=strict, probe=ChannelProbe(gm, inputs, rules), tables=tables)
    cost = CostModel.of(gm, rules, graph, tables)
    layers, layer_inputs, kernel_steps = _weighted_layers(gm, rules, graph, tables)
    stats = ModelStats.measure(gm, cost, model, tables.params)
    return Analysis(model, gm, inputs, rules, graph, cost, stats, layers, layer_inputs, kernel_steps, frontend,
                    {"trace": trace_seconds, "analysis": time.perf_counter() - t0}, strict, tables)


def _via_fx(model, args, kwargs, rules, strict) -> Analysis:
    t0 = time.perf_counter()
    gm, inputs = trace_with_values(model, args, kwargs, rules.has_module_rule,
                                   functools.partial(record_shapes, rule_of=rules.for_call,
                                                     raise_rule_errors=rule_errors_raise(strict)))
    return _analysed(gm, inputs, model, rules, strict, "fx", time.perf_counter() - t0)


def _try_fx(model, args, kwargs, rules, strict) -> Analysis | TraceError:
    """The fx analysis, or the TraceError stripped of its frames. The frames hold the traced copy of
    the model in reference cycles; freeing them before export runs saves one copy of every weight."""
    try:
        return _via_fx(model, args, kwargs, rules, strict)
    except TraceError as exc:
        error: BaseException | None = exc
        while error is not None:
            error.__traceback__ = None
            error = error.__cause__ or error.__context__
        failure = exc
    gc.collect()
    return failure


def _via_export(model, args, kwargs, rules, strict, why: str = "") -> Analysis:
    t0 = time.perf_counter()
    if isinstance(model, torch.export.ExportedProgram):
        gm = exported_graph(model, args, kwargs)
        model = gm  # the caller's program stays as it is; names and totals come from its graph
    else:
        try:
            gm = export_graph(model, args, kwargs)
        except TraceError as exc:
            check_no_kv_cache(model, kwargs, exc)
            raise
    inputs = flat_inputs(gm, args, kwargs)
    static = batch_dim(gm).static
    notes = "; ".join(n for n in (why, static and f"batch dim static: {static}") if n)
    return _analysed(gm, inputs, model, rules, strict, "export" + (f" ({notes})" if notes else ""),
                     time.perf_counter() - t0)


def analyse(model: torch.nn.Module | torch.export.ExportedProgram, example_inputs, *,
            example_kwargs: Mapping | None = None, rules: RuleTable | None = None, strict: bool = False,
            frontend: str | Frontend = "auto", gqa: GroupedQuery | str | None = None,
            grouped_convs: GroupedConv | str | None = None) -> Analysis:
    """Trace a copy of `model`, find its channel groups and its cost model, measure it (see the module docstring).

    `example_inputs`: a tensor or a tuple of the forward's positional arguments (() or None when it
    takes keywords only); `example_kwargs` its keyword arguments (arguments with defaults may be left
    out); not both empty. `model` may also be a
    torch.export ExportedProgram (always the export frontend). A Hugging Face model is analysed with its
    cache off (kvcache.cache_off), whatever its config says. `frontend`: "auto", "fx" or
    "export" (see Frontend); `Analysis.frontend` says which ran and why. With `strict=True` an
    op without a rule raises UnsupportedOpError and a failing rule raises RuleError, instead
    of freezing the channels they touch; the Analysis keeps `strict`, so a rule whose shrink
    breaks a rewrite in `apply` raises RuleError too. `gqa` ("kv_groups" or "query_heads", see GroupedQuery) says how
    grouped-query attention is pruned (the rule table's choice, KV groups, when None); `grouped_convs` ("within" or
    "whole", see rules.conv.GroupedConv) how grouped convolutions are (the table's choice, within groups, when None);
    those given are `Analysis.analysed_with`, and every plan it applies records them (apply_plan replays them).
    """
    try:
        frontend = Frontend(frontend)
    except ValueError:
        raise InputError(f"frontend must be one of {[f.value for f in Frontend]}, got {frontend!r}") from None
    rules, settings = rules or default_rules(), {}
    if gqa is not None:
        gqa = GroupedQuery.of(gqa)
        settings["gqa"] = gqa.value
        rules = rules.with_rule(torch.ops.aten.expand.default, RepeatKVRule(gqa))
    if grouped_convs is not None:
        grouped_convs = GroupedConv.of(grouped_convs)
        settings["grouped_convs"] = grouped_convs.value
        rules = with_grouped_convs(rules, grouped_convs)
    if isinstance(model, torch.export.ExportedProgram):
        analysis = _via_export(model, tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else
                               (example_inputs,), example_kwargs, rules, strict, "an ExportedProgram was given")
    else:
        args = check_model_and_inputs(model, example_inputs, example_kwargs)
        with cache_off(model):
            analysis = _by_frontend(model, args, example_kwargs, rules, strict, frontend)
    return replace(analysis, analysed_with=settings)


def _by_frontend(model, args, example_kwargs, rules, strict, frontend: Frontend) -> Analysis:
    """The analysis by `frontend`; "auto" tries fx first and export when fx fails or meets ops without a rule."""
    if frontend is Frontend.FX:
        return _via_fx(model, args, example_kwargs, rules, strict)
    if frontend is Frontend.EXPORT:
        return _via_export(model, args, example_kwargs, rules, strict)
    fx_analysis = _try_fx(model, args, example_kwargs, rules, strict)
    if isinstance(fx_analysis, TraceError):
        try:
            return _via_export(model, args, example_kwargs, rules, strict,
                               f"torch.fx cannot trace {type(model).__name__}")
        except TraceError as export_error:
            raise TraceError(f"{fx_analysis} And {export_error}") from None
    if not fx_analysis.dependencies.unsupported:
        return fx_analysis
    try:
        export_analysis = _via_export(model, args, example_kwargs, rules, strict,
                                      f"fx met {len(fx_analysis.dependencies.unsupported)} op(s) without a rule")
    except TraceError:
        return fx_analysis
    if export_analysis.dependencies.prunable_channels > fx_analysis.dependencies.prunable_channels:
        return export_analysis
    return fx_analysis
