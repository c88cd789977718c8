"""prune_graph and apply_plan: the public entry points.

trace -> analyse -> score -> plan -> rewrite (ShrinkChannels, EliminateDeadCode) -> report.
The caller's model is deep-copied first and never modified, even when an error is raised.
"""
from __future__ import annotations

import copy
import difflib
import numbers
import time
from dataclasses import dataclass, field
from typing import Iterable, Union

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_manager import PassManager

from .analysis import analyse
from .errors import InputError
from .groups import DependencyGraph, Role
from .importance import Criterion, resolve, score_groups
from .passes import EliminateDeadCode, ShrinkChannels
from .planner import PrunePlan, plan_global, plan_local
from .report import ModelStats, PruneReport, build_report
from .rules import RuleTable, default_rules
from .trace import as_tuple, record_values, trace


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
    copied = copy.deepcopy(model)
    training = copied.training
    gm = trace(copied, rules.has_module_rule)
    gm.eval()
    record_values(gm, inputs)
    gm.train(training)
    before = ModelStats.measure(gm)
    timings["trace"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = analyse(gm, rules, strict=strict)
    timings["analysis"] = time.perf_counter() - t0
    return _Prepared(gm, before, graph, inputs, timings)


def _resolve_ignore(model: torch.nn.Module, ignore: Iterable) -> list[str]:
    names = {m: n for n, m in model.named_modules()}
    all_names = [n for n in names.values() if n]
    out = []
    for entry in ignore:
        if isinstance(entry, torch.nn.Module):
            if entry not in names:
                raise InputError(f"ignore entry {type(entry).__name__} is not a submodule of the model; "
                                 "pass modules of the model itself or their qualified names")
            out.append(names[entry])
        elif isinstance(entry, str):
            if entry not in all_names:
                close = difflib.get_close_matches(entry, all_names, n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else " Use names from model.named_modules()."
                raise InputError(f"ignore entry {entry!r} names no module of the model.{hint}")
            out.append(entry)
        else:
            raise InputError(f"ignore entries must be modules or qualified names, got {type(entry).__name__}")
    return out


def _ignored_groups(graph: DependencyGraph, prefixes: list[str]) -> list[str]:
    ids = []
    for g in graph.groups:
        if any(s.role is Role.PRODUCER and any(s.name.startswith(p + ".") for p in prefixes) for s in g.members):
            ids.append(g.id)
    return ids


def _rewrite(prep: _Prepared, plan: PrunePlan, rules: RuleTable) -> tuple[fx.GraphModule, int]:
    gm = prep.gm
    training = gm.training
    shrink, dce = ShrinkChannels(prep.graph, plan, rules, prep.inputs), EliminateDeadCode(prep.inputs)
    shrink(gm)  # alone first, so the report can count parameters before dead-code removal
    sliced_params = sum(p.numel() for p in gm.parameters())
    PassManager([dce], run_checks_after_each_pass=False)(gm)
    gm.train(training)
    prep.timings["rewrite"] = shrink.timings["call"] + dce.timings["call"]
    prep.timings["checks"] = shrink.timings["ensures"] + dce.timings["ensures"]
    return gm, sliced_params


def _finish(prep: _Prepared, plan: PrunePlan, rules: RuleTable) -> PruneResult:
    gm, sliced_params = _rewrite(prep, plan, rules)
    t0 = time.perf_counter()
    report = build_report(prep.before, gm, prep.graph, plan, sliced_params)
    prep.timings["report"] = time.perf_counter() - t0
    return PruneResult(gm, plan, report, prep.graph, prep.timings)


def prune_graph(
    model: torch.nn.Module,
    example_inputs,
    *,
    ratio: float,
    importance: Union[str, Criterion] = "l2",
    scope: str = "local",
    ignore: Iterable = (),
    round_to: int = 1,
    strict: bool = False,
    rules: RuleTable | None = None,
) -> PruneResult:
    """Remove `ratio` of the channels of every prunable group (local) or of the whole model (global).

    Returns a physically smaller GraphModule with the same inputs and output shapes, the
    plan (JSON-serialisable) and a measured report. `model` is not modified.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 <= float(ratio) < 1.0:
        raise InputError(f"ratio must be a number in [0, 1), got {ratio!r}; e.g. ratio=0.5 removes half the channels")
    if scope not in ("local", "global"):
        raise InputError(f"scope must be 'local' or 'global', got {scope!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise InputError(f"round_to must be a positive integer, got {round_to!r}")
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    criterion = resolve(importance)
    rules = rules or default_rules()
    ignored = _resolve_ignore(model, ignore)
    prep = _prepare(model, example_inputs, rules, strict)
    if ignored:
        prep.graph = prep.graph.with_frozen(_ignored_groups(prep.graph, ignored), "output channels kept by `ignore`")
    t0 = time.perf_counter()
    scores = score_groups(prep.graph.prunable, prep.gm, criterion)
    prep.timings["scoring"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    planner = plan_local if scope == "local" else plan_global
    plan = planner(prep.graph, scores, float(ratio), round_to)
    prep.timings["planning"] = time.perf_counter() - t0
    return _finish(prep, plan, rules)


def apply_plan(model: torch.nn.Module, example_inputs, plan: PrunePlan, *, rules: RuleTable | None = None) -> PruneResult:
    """Rebuild the pruned architecture of `plan` from a fresh copy of `model` (e.g. with retrained weights)."""
    if isinstance(plan, str):
        plan = PrunePlan.from_json(plan)
    rules = rules or default_rules()
    prep = _prepare(model, example_inputs, rules, strict=False)
    plan.validate(prep.graph)
    return _finish(prep, plan, rules)
