"""prune_graph and apply_plan: one-call conveniences over the stages (analyse -> plan -> apply).

Their keywords are sugar over the option objects of graphprune.options; the caller's model
is never modified, even when an error is raised.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence, Union

import torch

from .analysis import PruneResult, analyse
from .gcpause import paused_gc
from .importance import Criterion
from .options import Budget, Options
from .planner import PrunePlan
from .rules import RuleTable
from .targets import Target

__all__ = ["prune_graph", "apply_plan", "PruneResult"]


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
    target_kv_bytes: int | None = None,
    ratios: Mapping[str, float] | None = None,
    min_keep: float = 0.1,
    calibration: Sequence[tuple] = (),
    loss_fn: Callable | None = None,
    recalibrate_bn: bool = False,
    example_kwargs: Mapping | None = None,
    frontend: str = "auto",
    gqa: str | None = None,
    grouped_convs: str | None = None,
    uniform_layers: bool = False,
    channel_costs: Mapping[str, float] | None = None,
) -> PruneResult:
    """Prune whole channels and return a physically smaller GraphModule, its plan and a measured report.

    How much (a Budget): exactly one of `ratio` (share of channels removed per group with scope="local", of all
    prunable channels with scope="global"), `target_params`, `target_macs` or `target_kv_bytes` (per token).
    Which (a Strategy): `importance` ("l1", "l2", "bn_scale", "taylor", "activation", "apoz", "wanda",
    "random", "flops_l2", a Criterion, or a callable(group, model) -> scores), `scope`,
    `min_keep` (the share every group keeps), `ratios` (local ratio per module name or group id),
    `uniform_layers` (global scope: one count for a group repeated in every layer of a stack),
    `channel_costs` (global scope: group id -> what removing one of its channels saves, e.g. the ms of
    `latency.LatencyModel.channel_costs()`; channels are then ranked by importance per unit saved).
    Channel counts (a Target): `target` picks a channel step per layer kind; the default
    "auto" is this machine's measured ORT profile when one is cached (runtimes.calibration.calibrate),
    else "ort-x86" on x86-64 (multiples of 16 with AVX-512, 8 with AVX2 for convs; 8 for linear
    layers) and "xnnpack" (no rounding) elsewhere; `round_to` sets one step for every layer. The
    target is resolved once, before tracing, and the report names the Target it gave. Data (a
    Calibration): `calibration` batches (the model's inputs, then what `loss_fn(output, *rest)`
    needs) for data-driven criteria, and `recalibrate_bn` to re-estimate BatchNorm statistics on
    them. `ignore` keeps the output channels of the given modules. `frontend` ("auto", "fx",
    "export") picks how the model becomes a graph (see analysis.Frontend); `gqa` ("kv_groups",
    "query_heads") how grouped-query attention is pruned, `grouped_convs` ("within"/"whole" groups; default
    Target.grouped_convs) how grouped convs are. `model` may be a torch.export ExportedProgram. The input and
    output shapes never change; `model` is not modified. The cyclic GC is paused during the call (gcpause).
    """
    budget = Budget.from_keywords(ratio, target_params, target_macs, target_kv_bytes)
    options = Options.from_keywords(importance=importance, scope=scope, min_keep=min_keep, ratios=ratios,
                                    round_to=round_to, target=target, calibration=calibration, loss_fn=loss_fn,
                                    recalibrate_bn=recalibrate_bn, ignore=ignore, uniform_layers=uniform_layers,
                                    channel_costs=channel_costs)
    grouped_convs = options.target.grouped_convs if grouped_convs is None else grouped_convs
    with paused_gc():
        analysis = analyse(model, example_inputs, example_kwargs=example_kwargs, rules=rules, strict=strict,
                           frontend=frontend, gqa=gqa, grouped_convs=grouped_convs)
        return options.prune(analysis, budget)


def apply_plan(model: torch.nn.Module, example_inputs, plan: PrunePlan | str, *, rules: RuleTable | None = None) -> PruneResult:
    """Rebuild the pruned architecture of `plan` from a fresh copy of `model` (e.g. with retrained weights), the
    model analysed as the plan's was (`PrunePlan.analysed_with`: how grouped convolutions and grouped-query
    attention were pruned)."""
    if isinstance(plan, str):
        plan = PrunePlan.from_json(plan)
    with paused_gc():
        return analyse(model, example_inputs, rules=rules, **plan.analysed_with).apply(plan)
