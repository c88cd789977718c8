"""prune_graph and apply_plan: the public entry points.

trace -> analyse -> score -> plan -> rewrite (ShrinkChannels, EliminateDeadCode,
optionally RecalibrateBatchNorm) -> report. The caller's model is deep-copied first and
never modified, even when an error is raised.
"""
from __future__ import annotations

import difflib
import numbers
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence, Union

import torch
import torch.fx as fx

from .analysis import analyse
from .errors import InputError
from .groups import DependencyGraph, Role
from .importance import Criterion, ScoringContext, resolve, score_groups
from .passes import EliminateDeadCode, RecalibrateBatchNorm, ShrinkChannels
from .planner import Planned, PrunePlan, plan_global, plan_local, plan_to_target, producer_partitions
from .report import ModelStats, PruneReport, build_report, channel_mac_cost, count_params, predict
from .rules import RuleTable, default_rules
from .targets import Target, resolve_target
from .trace import as_tuple, clone_module, record_values, trace


@dataclass(frozen=True)
class PruneResult:
    model: fx.GraphModule
    plan: PrunePlan
    report: PruneReport
    graph: DependencyGraph
    timings: dict = field(default_factory=dict, compare=False)  # seconds per stage


@dataclass
class _Prepared:
    gm: fx.GraphModule  # traced copy of the caller's model; scored, then rewritten in place
    before: ModelStats
    graph: DependencyGraph
    inputs: tuple
    timings: dict


def _prepare(model: torch.nn.Module, example_inputs, rules: RuleTable, strict: bool) -> _Prepared:
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = as_tuple(example_inputs)
    timings = {}
    t0 = time.perf_counter()
    gm = trace(clone_module(model), rules.has_module_rule)
    training = gm.training
    gm.eval()
    record_values(gm, inputs)
    gm.train(training)
    timings["trace"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = analyse(gm, rules, strict=strict)
    timings["analysis"] = time.perf_counter() - t0
    return _Prepared(gm, ModelStats.measure(gm, graph), graph, inputs, timings)


def _module_names(model: torch.nn.Module, entries: Iterable, what: str) -> list[str]:
    names = {m: n for n, m in model.named_modules()}
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


def _groups_produced_by(graph: DependencyGraph, prefix: str) -> list[str]:
    return [g.id for g in graph.groups
            if any(s.role is Role.PRODUCER and s.name.startswith(prefix + ".") for s in g.members)]


def _group_ratios(model, graph: DependencyGraph, ratio: float, overrides: Mapping) -> dict[str, float]:
    """Per-group ratio: the default, overridden by group id or by the module that produces the group."""
    ratios = {g.id: ratio for g in graph.prunable}
    known = {g.id for g in graph.groups}
    by_module = {k: v for k, v in overrides.items() if k not in known}
    for name in sorted(_module_names(model, by_module, "ratios"), key=len):  # longer (deeper) names win
        for gid in _groups_produced_by(graph, name):
            if gid in ratios:
                ratios[gid] = _check_ratio(by_module[name], f"ratios[{name!r}]")
    for key, value in overrides.items():
        if key in known and key in ratios:
            ratios[key] = _check_ratio(value, f"ratios[{key!r}]")
    return ratios


def _check_ratio(ratio, what: str = "ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 <= float(ratio) < 1.0:
        raise InputError(f"{what} must be a number in [0, 1), got {ratio!r}; e.g. {what}=0.5 removes half the channels")
    return float(ratio)


def _rewrite(prep: _Prepared, plan: PrunePlan, rules: RuleTable, calibration: Sequence[tuple]) -> tuple[fx.GraphModule, int]:
    """ShrinkChannels, then EliminateDeadCode (and RecalibrateBatchNorm), each checked by its own `ensures`.

    The passes also run inside torch.fx's PassManager; here they are called directly, which
    saves the recompile PassManager does after a pass that changed nothing.
    """
    gm = prep.gm
    training = gm.training
    shrink = ShrinkChannels(prep.graph, plan, rules, prep.inputs)
    later = [EliminateDeadCode(prep.inputs)] + ([RecalibrateBatchNorm(prep.inputs, calibration)] if calibration else [])
    shrink(gm)
    sliced_params = count_params(gm)  # after slicing, before dead-code removal: for the report
    for graph_pass in later:
        graph_pass(gm)
    gm.train(training)
    passes = [shrink] + later
    prep.timings["rewrite"] = sum(p.timings["call"] for p in passes)
    prep.timings["checks"] = sum(p.timings["ensures"] for p in passes)
    return gm, sliced_params


def _finish(prep: _Prepared, planned: Planned, rules: RuleTable, recalibrate: Sequence[tuple] = ()) -> PruneResult:
    gm, sliced_params = _rewrite(prep, planned.plan, rules, recalibrate)
    t0 = time.perf_counter()
    report = build_report(prep.before, gm, prep.graph, planned.plan, sliced_params, planned.rounding)
    prep.timings["report"] = time.perf_counter() - t0
    return PruneResult(gm, planned.plan, report, prep.graph, prep.timings)


def prune_graph(
    model: torch.nn.Module,
    example_inputs,
    *,
    ratio: float | None = None,
    importance: Union[str, Criterion, Callable] = "l2",
    scope: str = "local",
    ignore: Iterable = (),
    round_to: int | None = None,
    target: str | Target = "auto",
    strict: bool = False,
    rules: RuleTable | None = None,
    target_params: int | None = None,
    target_macs: int | None = None,
    ratios: Mapping[str, float] | None = None,
    min_keep: float = 0.1,
    calibration: Sequence[tuple] = (),
    loss_fn: Callable | None = None,
    recalibrate_bn: bool = False,
) -> PruneResult:
    """Prune whole channels and return a physically smaller GraphModule, its plan and a measured report.

    How much: exactly one of `ratio` (share of channels removed per group with
    scope="local", of all prunable channels with scope="global"), `target_params` or
    `target_macs` (prune until the count is at most the target, within one channel step).
    `ratios` overrides the local ratio per module name (the groups it produces) or group id.
    Which channels: `importance` ("l1", "l2", "bn_scale", "taylor", "activation", "apoz",
    "random", "flops_l2", a Criterion, or a callable(group, model) -> scores); data-driven
    criteria read `calibration` (batches: the model's inputs, then what `loss_fn(output,
    *rest)` needs). Channel counts: `target` picks a channel step per layer kind; the
    default "auto" is "ort-x86" on x86-64 (multiples of 16 with AVX-512, 8 with AVX2 for
    convs; 8 for linear layers) and "xnnpack" (no rounding) elsewhere; an explicit
    `round_to` sets one step for every group. Kept counts are rounded down, never below
    `min_keep` of a group (and never to zero). `recalibrate_bn` re-estimates BatchNorm
    statistics on `calibration` after pruning. `ignore` keeps the output channels of the
    given modules. The input and output shapes never change; `model` is not modified.
    """
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    given = [name for name, v in (("ratio", ratio), ("target_params", target_params), ("target_macs", target_macs))
             if v is not None]
    if len(given) != 1:
        raise InputError(f"give exactly one of ratio, target_params, target_macs (got {', '.join(given) or 'none'}); "
                         "e.g. ratio=0.5")
    if ratio is not None:
        amount: float | Budget = _check_ratio(ratio)
    else:
        which = 0 if target_params is not None else 1
        amount = Budget(("params", "MACs")[which], target_params if target_params is not None else target_macs,
                        lambda prep: (lambda plan: predict(prep.before, prep.graph, plan)[which]),
                        lambda prep: (prep.before.params, prep.before.macs)[which])
    return _prune(model, example_inputs, amount, importance=importance, scope=scope, ignore=ignore, round_to=round_to,
                  target=target, strict=strict, rules=rules, ratios=ratios, min_keep=min_keep, calibration=calibration,
                  loss_fn=loss_fn, recalibrate_bn=recalibrate_bn)


@dataclass(frozen=True)
class Budget:
    """A target count to prune down to: `count(prep)` gives plan -> predicted count; `current(prep)` the unpruned one."""

    what: str
    goal: int
    count: Callable[[_Prepared], Callable[[PrunePlan], int]]
    current: Callable[[_Prepared], int]


def _prune(model, example_inputs, amount: float | Budget, *, importance="l2", scope="local", ignore=(), round_to=None,
           target="auto", strict=False, rules=None, ratios=None, min_keep=0.1, calibration=(), loss_fn=None,
           recalibrate_bn=False) -> PruneResult:
    """prune_graph once the amount is known: a ratio, or a Budget to bisect down to (defaults as prune_graph's)."""
    if scope not in ("local", "global"):
        raise InputError(f"scope must be 'local' or 'global', got {scope!r}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise InputError(f"round_to must be a positive integer or None (the target decides), got {round_to!r}")
    if not 0.0 <= min_keep < 1.0:
        raise InputError(f"min_keep must be in [0, 1), got {min_keep!r}")
    if recalibrate_bn and not calibration:
        raise InputError("recalibrate_bn=True needs calibration=[batch, ...] to re-estimate BatchNorm statistics")
    if scope == "global" and ratios:
        raise InputError("per-module `ratios` apply to scope='local' only")
    criterion = resolve(importance)
    device_target = resolve_target(target)
    rules = rules or default_rules()
    ignored = _module_names(model, ignore, "ignore")
    calibration = tuple(as_tuple(b) for b in calibration)
    prep = _prepare(model, example_inputs, rules, strict)
    if ignored:
        ids = [gid for name in ignored for gid in _groups_produced_by(prep.graph, name)]
        prep.graph = prep.graph.with_frozen(ids, "output channels kept by `ignore`")
    graph = prep.graph

    t0 = time.perf_counter()
    ctx = ScoringContext(prep.gm, graph, calibration, loss_fn, lambda g: channel_mac_cost(prep.before, g))
    scores = score_groups(graph.prunable, criterion, ctx)
    prep.timings["scoring"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    modules = dict(prep.gm.named_modules())
    rounding_target = device_target if round_to is None else Target(f"round_to={round_to}", round_to, round_to, round_to)
    constraints = {g.id: rounding_target.constraints(g, modules) for g in graph.prunable}
    partitions = {g.id: producer_partitions(g) for g in graph.prunable}

    def make(r: float) -> Planned:
        if scope == "local":
            return plan_local(graph, scores, _group_ratios(model, graph, r, ratios or {}), constraints, min_keep,
                              partitions, rounding_target.one_block)
        return plan_global(graph, scores, r, constraints, min_keep, rounding_target.one_block)

    if isinstance(amount, Budget):
        current = amount.current(prep)
        if not isinstance(amount.goal, numbers.Real) or isinstance(amount.goal, bool) or not 0 < amount.goal < current:
            raise InputError(f"target {amount.what} {amount.goal!r} must be a positive number below the model's "
                             f"{current:,} {amount.what}")
        planned = plan_to_target(make, amount.count(prep), amount.goal, amount.what)
    else:
        planned = make(amount)
    prep.timings["planning"] = time.perf_counter() - t0
    return _finish(prep, planned, rules, calibration if recalibrate_bn else ())


def apply_plan(model: torch.nn.Module, example_inputs, plan: PrunePlan | str, *, rules: RuleTable | None = None) -> PruneResult:
    """Rebuild the pruned architecture of `plan` from a fresh copy of `model` (e.g. with retrained weights)."""
    if isinstance(plan, str):
        plan = PrunePlan.from_json(plan)
    rules = rules or default_rules()
    prep = _prepare(model, example_inputs, rules, strict=False)
    plan.validate(prep.graph)
    return _finish(prep, Planned(plan, {}), rules)
