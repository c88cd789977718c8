"""The options of a pruning run, as small plain-data objects that validate themselves.

- how much: a `Budget` — `Ratio(0.5)` (share of channels removed per group, or of all
  channels in global scope), `MaxParams(n)` / `MaxMacs(n)` (the least pruning whose
  predicted count is at most n, found by bisection on the strategy's ratio), `MaxKVBytes(n)`
  (KV-cache bytes per token of a transformer), or any other
  `CountBudget` (latency.LatencyBudget);
- which: a `Strategy` — importance criterion, scope, the `min_keep` guard, per-module or
  per-group ratio overrides;
- how many per layer: a deployment `targets.Target` (channel steps), see targets.py;
- with what data: `Calibration` — batches for data-driven criteria, a loss for Taylor, and
  whether to re-estimate BatchNorm statistics after pruning.
`prune_graph`'s keywords are sugar over these objects (`Options.from_keywords`, which also
resolves `target="auto"`, once).

Budgets are pure solvers over counts: a budget sees a `ModelCounts` (the model's counts and
predictors of a plan's counts), never the Analysis that computes them.
"""
from __future__ import annotations

import enum
import numbers
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .cost import Counts
from .errors import InputError
from .importance import Criterion, resolve
from .planner import Planned, PrunePlan, plan_to_budget
from .runtimes.profiles import resolve_target
from .targets import Target
from .trace import as_tuple


def check_ratio(ratio, what: str = "ratio") -> float:
    """`ratio` as a float in [0, 1), or an InputError naming `what`."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 <= float(ratio) < 1.0:
        raise InputError(f"{what} must be a number in [0, 1), got {ratio!r}; e.g. {what}=0.5 removes half the channels")
    return float(ratio)


@dataclass(frozen=True)
class ModelCounts:
    """What a budget may read of a model: its counts now, and its counts once a plan is applied (predicted from
    shapes alone). Analysis.counts() builds it."""

    params: int
    macs: int
    kv_bytes: float | None  # KV-cache bytes per token; None when the model has no KV cache (no attention)
    predict: Callable[[PrunePlan], Counts]  # params and MACs after a plan
    predict_kv_bytes: Callable[[PrunePlan], float]  # KV-cache bytes per token after a plan


class Budget:
    """How much to prune: turns a plan maker (ratio -> Planned) into one plan, reading only the model's counts."""

    def plan(self, make: Callable[[float], Planned], counts: ModelCounts) -> Planned:
        raise NotImplementedError

    @staticmethod
    def from_keywords(ratio=None, target_params=None, target_macs=None, target_kv_bytes=None) -> "Budget":
        """The budget of prune_graph's keywords: exactly one of ratio, target_params, target_macs, target_kv_bytes."""
        keywords = (("ratio", ratio), ("target_params", target_params), ("target_macs", target_macs),
                    ("target_kv_bytes", target_kv_bytes))
        given = [name for name, v in keywords if v is not None]
        if len(given) != 1:
            raise InputError(f"give exactly one of ratio, target_params, target_macs, target_kv_bytes "
                             f"(got {', '.join(given) or 'none'}); e.g. ratio=0.5")
        if ratio is not None:
            return Ratio(ratio)
        if target_kv_bytes is not None:
            return MaxKVBytes(target_kv_bytes)
        return MaxParams(target_params) if target_params is not None else MaxMacs(target_macs)


@dataclass(frozen=True)
class Ratio(Budget):
    value: float

    def __post_init__(self):
        object.__setattr__(self, "value", check_ratio(self.value))

    def plan(self, make, counts):
        return make(self.value)


@dataclass(frozen=True)
class CountBudget(Budget):
    """Prune until `count(counts, plan)` is at most `goal`: the least pruning that gets there."""

    goal: float
    what = "count"

    def __post_init__(self):
        if isinstance(self.goal, bool) or not isinstance(self.goal, numbers.Real) or not self.goal > 0:
            raise InputError(f"target {self.what} {self.goal!r} must be a positive number below the model's {self.what}")

    def count(self, counts: ModelCounts, plan: PrunePlan) -> float:
        raise NotImplementedError

    def current(self, counts: ModelCounts) -> float:
        raise NotImplementedError

    def plan(self, make, counts):
        current = self.current(counts)
        if not self.goal < current:
            raise InputError(f"target {self.what} {self.goal!r} must be a positive number below the model's "
                             f"{current:,} {self.what}")
        return plan_to_budget(make, lambda plan: self.count(counts, plan), self.goal, self.what)


@dataclass(frozen=True)
class MaxParams(CountBudget):
    what = "params"

    def count(self, counts, plan):
        return counts.predict(plan).params

    def current(self, counts):
        return counts.params


@dataclass(frozen=True)
class MaxMacs(CountBudget):
    what = "MACs"

    def count(self, counts, plan):
        return counts.predict(plan).macs

    def current(self, counts):
        return counts.macs


@dataclass(frozen=True)
class MaxKVBytes(CountBudget):
    """KV-cache bytes per token (2 x layers x kv_heads x head_dim x bytes, see kvcache.py) at most `goal`."""

    what = "KV-cache bytes per token"

    def count(self, counts, plan):
        return counts.predict_kv_bytes(plan)

    def current(self, counts):
        if counts.kv_bytes is None:
            raise InputError("target_kv_bytes needs a model with scaled_dot_product_attention (it has no KV cache); "
                             "use target_params or target_macs")
        return counts.kv_bytes


class Scope(enum.Enum):
    LOCAL = "local"  # every prunable group loses the ratio
    GLOBAL = "global"  # channels of all groups ranked together


@dataclass(frozen=True)
class Strategy:
    """Which channels go: `importance` (a built-in name, a Criterion or a callable(group, model) -> scores),
    `scope` ("local" or "global"), the `min_keep` share every group keeps, and per-module or per-group
    `ratios` overriding a local ratio. `uniform_layers` (global scope) keeps one count for a group repeated
    in every layer of a stack, as a Hugging Face config can only describe (local scope is uniform already).
    `channel_costs` (global scope; group id -> what removing one of its channels saves, > 0, e.g.
    `LatencyModel.channel_costs()`) ranks channels by importance per unit saved (planner.plan_global)."""

    importance: str | Criterion | Callable = "l2"
    scope: Scope | str = Scope.LOCAL
    min_keep: float = 0.1
    ratios: Mapping[str, float] = field(default_factory=dict)
    uniform_layers: bool = False  # global scope: a group repeated in every layer keeps one count in all of them
    channel_costs: Mapping[str, float] = field(default_factory=dict)  # global scope: rank by importance per cost

    def __post_init__(self):
        if not isinstance(self.scope, Scope):
            if self.scope not in [s.value for s in Scope]:
                raise InputError(f"scope must be 'local' or 'global', got {self.scope!r}")
            object.__setattr__(self, "scope", Scope(self.scope))
        if isinstance(self.min_keep, bool) or not isinstance(self.min_keep, numbers.Real) or not 0.0 <= self.min_keep < 1.0:
            raise InputError(f"min_keep must be in [0, 1), got {self.min_keep!r}")
        if self.scope is Scope.GLOBAL and self.ratios:
            raise InputError("per-module `ratios` apply to scope='local' only")
        object.__setattr__(self, "ratios", dict(self.ratios or {}))
        object.__setattr__(self, "channel_costs", _checked_costs(self.channel_costs, self.scope))
        object.__setattr__(self, "importance", resolve(self.importance))

    @property
    def criterion(self) -> Criterion:
        return self.importance  # resolved in __post_init__


def _checked_costs(costs: Mapping[str, float] | None, scope: Scope) -> dict[str, float]:
    """`costs` as a dict of positive finite floats for scope='global', or an InputError saying what to fix."""
    costs = dict(costs or {})
    if costs and scope is not Scope.GLOBAL:
        raise InputError("channel_costs rank channels across groups, so they need scope='global'")
    for gid, cost in costs.items():
        if isinstance(cost, bool) or not isinstance(cost, numbers.Real) or not 0 < float(cost) < float("inf"):
            raise InputError(f"channel_costs[{gid!r}] is {cost!r}; a cost is a positive finite number (what "
                             "removing one channel of the group saves, e.g. ms)")
    return {gid: float(cost) for gid, cost in costs.items()}


@dataclass(frozen=True)
class Calibration:
    """Data for data-driven criteria: `batches` (model inputs first, then what `loss_fn(output, *rest)`
    needs), and `recalibrate_bn` to re-estimate BatchNorm statistics on them after pruning."""

    batches: Sequence[tuple] = ()
    loss_fn: Callable | None = None
    recalibrate_bn: bool = False

    def __post_init__(self):
        object.__setattr__(self, "batches", tuple(as_tuple(b) for b in self.batches))
        if self.recalibrate_bn and not self.batches:
            raise InputError("recalibrate_bn=True needs calibration=[batch, ...] to re-estimate BatchNorm statistics")


@dataclass(frozen=True)
class Options:
    """Everything but the budget: which channels, how many per layer (a resolved Target: building Options reads
    nothing from disk), with what data, and what to keep."""

    target: Target
    strategy: Strategy = field(default_factory=Strategy)
    calibration: Calibration = field(default_factory=Calibration)
    ignore: tuple = ()

    @classmethod
    def from_keywords(cls, *, importance="l2", scope="local", min_keep=0.1, ratios=None, round_to=None, target="auto",
                      calibration=(), loss_fn=None, recalibrate_bn=False, ignore=(), uniform_layers=False,
                      channel_costs=None) -> "Options":
        """prune_graph's keywords (each validated by the object it builds); `target` and `round_to` are resolved
        here, once (runtimes.profiles.resolve_target: "auto" may read this machine's measured profile)."""
        return cls(strategy=Strategy(importance, scope, min_keep, ratios or {}, uniform_layers, channel_costs or {}),
                   target=resolve_target(target, round_to),
                   calibration=Calibration(calibration, loss_fn, recalibrate_bn), ignore=tuple(ignore))

    def prune(self, analysis, budget: Budget):
        """`analysis` (a graphprune.Analysis) pruned to `budget` with these options: a PruneResult."""
        return analysis.with_ignored(self.ignore).prune(budget, self.strategy, self.target, self.calibration)
