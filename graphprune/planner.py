"""Planning: turn scores and a strategy into a PrunePlan, plain data {group id: kept channels}.

Local scope removes ceil(ratio * size) channels of every prunable group (at least the
share asked, never all); global scope ranks all channels of all prunable groups together
on scores normalised by their group's mean (so groups of different widths and fan-ins
compare) and removes the lowest ratio share. Count budgets (`target_params`, `target_macs`)
bisect the ratio until the count is reached.
Guards: a group keeps at least `min_keep` of its channels and at least one (and at least
one position of every member slot, so no layer is left with zero inputs); each layer's
kept count is rounded to the nearest multiple of the deployment target's channel step where that stays above the guard.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from .codesizes import equalise
from .errors import InputError
from .groups import ChannelGroup, DependencyGraph, Role, channel_ranges

PLAN_FORMAT = 1
ANALYSIS_SETTINGS = frozenset({"grouped_convs", "gqa"})  # analyse's keywords that change a model's groups


@dataclass(frozen=True)
class PrunePlan:
    """Kept channel indices per group id, with each group's original size to check replays, and the settings of
    the analysis that found the groups where they change them (`analysed_with`: analyse's `grouped_convs` and `gqa`,
    as values; a replay analyses the model the same way)."""

    keep: Mapping[str, tuple[int, ...]]
    sizes: Mapping[str, int]
    analysed_with: Mapping[str, str] = field(default_factory=dict, compare=False)  # how, not what: plans that keep the
    # same channels of the same groups are equal

    def to_json(self) -> str:
        groups = {gid: {"size": self.sizes[gid], "keep": list(self.keep[gid])} for gid in sorted(self.keep)}
        settings = {"analysed_with": dict(sorted(self.analysed_with.items()))} if self.analysed_with else {}
        return json.dumps({"format": PLAN_FORMAT, **settings, "groups": groups}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "PrunePlan":
        """Parse a plan.json strictly: format PLAN_FORMAT; optionally `analysed_with` (ANALYSIS_SETTINGS ->
        value); per group a positive int `size` and a non-empty `keep` of sorted unique ints in [0, size).
        Anything else is an InputError."""
        try:
            data = json.loads(text, object_pairs_hook=cls._no_duplicate_keys)
        except (ValueError, TypeError) as exc:
            raise InputError(f"not a graphprune plan ({type(exc).__name__}: {exc}); pass the text of a plan.json") from exc
        if not isinstance(data, dict) or not {"format", "groups"} <= set(data) <= {"format", "groups", "analysed_with"} \
                or not isinstance(data["groups"], dict):
            raise InputError('not a graphprune plan: expected {"format": %d, "groups": {group id: {"size": n, '
                             '"keep": [...]}}}; pass the text of a plan.json written by graphprune' % PLAN_FORMAT)
        if not cls._is_int(data["format"]) or data["format"] != PLAN_FORMAT:
            raise InputError(f"plan format {data['format']!r} is not supported: this graphprune reads format "
                             f"{PLAN_FORMAT} only; re-create the plan with this version (graphprune prune)")
        keep, sizes = {}, {}
        for gid, entry in data["groups"].items():
            keep[gid], sizes[gid] = cls._parse_group(gid, entry)
        return cls(keep, sizes, cls._parse_settings(data.get("analysed_with", {})))

    @staticmethod
    def _parse_settings(settings) -> dict[str, str]:
        """`analysed_with`: {"grouped_convs": value, "gqa": value}, either or both (values checked by analyse)."""
        if not isinstance(settings, dict) or not set(settings) <= ANALYSIS_SETTINGS \
                or not all(isinstance(v, str) for v in settings.values()):
            raise InputError(f"plan analysed_with must map {sorted(ANALYSIS_SETTINGS)} to strings, "
                             f"got {settings!r:.80}; fix plan.json or re-create it with graphprune prune")
        return dict(settings)

    @staticmethod
    def _no_duplicate_keys(pairs: list) -> dict:
        keys = [k for k, _ in pairs]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"duplicate keys {duplicates}")
        return dict(pairs)

    @staticmethod
    def _is_int(value) -> bool:
        """A JSON integer: not a bool, not a float (1.0 and 1.7 alike)."""
        return isinstance(value, int) and not isinstance(value, bool)

    @staticmethod
    def _parse_group(gid, entry) -> tuple[tuple[int, ...], int]:
        """(keep, size) of one plan group; InputError naming the group and the fix otherwise."""
        fix = "fix plan.json or re-create it with graphprune prune"
        if not isinstance(gid, str) or not gid:
            raise InputError(f"plan group id {gid!r} must be a non-empty string; {fix}")
        if not isinstance(entry, dict) or set(entry) != {"size", "keep"}:
            raise InputError(f'plan group {gid!r} must be {{"size": n, "keep": [indices]}}, got {entry!r:.80}; {fix}')
        size, kept = entry["size"], entry["keep"]
        if not PrunePlan._is_int(size) or size < 1:
            raise InputError(f"plan group {gid!r} has size {size!r}; a size is a positive integer; {fix}")
        if not isinstance(kept, list) or not kept:
            raise InputError(f"plan group {gid!r} keeps {kept!r:.80}; keep is a non-empty list of channel indices; {fix}")
        bad = next((i for i in kept if not PrunePlan._is_int(i)), None)
        if bad is not None:
            raise InputError(f"plan group {gid!r} keeps index {bad!r}, which is not an integer; {fix}")
        if any(b <= a for a, b in zip(kept, kept[1:])):
            raise InputError(f"plan group {gid!r}: keep indices must be sorted and unique; {fix}")
        if kept[0] < 0 or kept[-1] >= size:
            raise InputError(f"plan group {gid!r} keeps index {kept[0] if kept[0] < 0 else kept[-1]}, outside [0, {size}); {fix}")
        return tuple(kept), size

    def validate(self, graph: DependencyGraph) -> None:
        """Raise InputError unless every planned group exists, has the recorded size and valid indices."""
        known = {g.id: g for g in graph.groups}
        for gid, kept in self.keep.items():
            g = known.get(gid)
            if g is None:
                raise InputError(f"plan names group {gid!r}, which this model does not have; "
                                 "a plan replays only on the architecture it was made for")
            if g.size != self.sizes[gid]:
                raise InputError(f"plan group {gid!r} had {self.sizes[gid]} channels, this model's has {g.size}")
            if g.frozen:
                raise InputError(f"plan prunes group {gid!r}, which is frozen: {'; '.join(g.frozen_reasons)}")
            if not kept or min(kept) < 0 or max(kept) >= g.size or len(set(kept)) != len(kept):
                raise InputError(f"plan group {gid!r} keeps invalid indices (need 1..{g.size} distinct indices in [0, {g.size}))")
            for pin in g.pins:
                missing = sorted(set(pin.channels) - set(kept))
                if missing:
                    raise InputError(f"plan group {gid!r} drops channels {channel_ranges(np.asarray(missing))}, which "
                                     f"must be kept: {pin.reason}; a plan keeps every pinned channel")


def producer_partitions(group: ChannelGroup) -> tuple[np.ndarray, ...]:
    """The group's channels split by the layer that writes them, when the writers split it cleanly.

    In a DenseNet block the stem and each growth conv write their own channels of one group;
    in a residual stage every writer writes all of them (one part). Sets that contain another
    writer's set (a norm over the concatenation) do not split anything.
    """
    sets = {}
    for slot, (channels, _) in group.member_channels.items():
        if slot.role is Role.PRODUCER:
            sets.setdefault(channels.tobytes(), channels)
    found = list(sets.values())
    minimal = [c for c in found if not any(len(o) < len(c) and np.isin(o, c).all() for o in found)]
    covered = np.concatenate(minimal) if minimal else np.empty(0, np.int64)
    if len(minimal) > 1 and len(covered) == group.size and len(np.unique(covered)) == group.size:
        return tuple(minimal)
    return (np.arange(group.size),)


def locked_mask(group: ChannelGroup) -> np.ndarray:
    """True at the group's pinned channels: every plan keeps them."""
    locked = np.zeros(group.size, dtype=bool)
    locked[group.pinned] = True
    return locked


def _keep_best(group: ChannelGroup, scores: np.ndarray, quotas: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """The pinned channels and the best others up to `n` channels of each (channels, n) quota, adjusted so
    every member slot keeps a position.

    A slot left empty gets its best channel back; to stay at the total, the worst kept channels
    that are neither pinned nor the last one of some slot are dropped instead.
    """
    order = np.argsort(-scores, kind="stable")  # best first
    locked = locked_mask(group)
    kept = locked.copy()
    for channels, n in quotas:
        free = channels[~locked[channels]]
        kept[free[np.argsort(-scores[free], kind="stable")[:max(0, n - len(channels) + len(free))]]] = True
    n_keep = int(kept.sum())
    slot_channels = group.slot_channel_sets
    required = set()
    for channels in slot_channels:
        if not kept[channels].any():
            best = channels[np.argmax(scores[channels])]
            kept[best] = True
            required.add(int(best))
    excess = int(kept.sum()) - n_keep
    for c in order[::-1]:
        if excess <= 0:
            break
        if not kept[c] or locked[c] or int(c) in required:
            continue
        kept[c] = False
        if all(kept[channels].any() for channels in slot_channels):
            excess -= 1
        else:
            kept[c] = True
    return np.flatnonzero(kept)


@dataclass(frozen=True)
class Rounding:
    """How a target's channel step changed one group's kept count."""

    step: int
    asked: int  # channels the strategy asked to keep
    kept: int  # channels kept after rounding every layer to its nearest step
    one_block: bool = False  # a layer was kept at one block although that keeps more than asked
    off_step: int = 0  # layers left off their step: narrower than one step, and raising them would keep more than asked


@dataclass(frozen=True)
class Planned:
    plan: PrunePlan
    rounding: Mapping[str, Rounding]  # every pruned group whose step is > 1
    timings: Mapping[str, float] = field(default_factory=dict, compare=False)  # seconds of scoring and planning
    target: str = ""  # name of the deployment target whose channel steps were applied


def guard(group: ChannelGroup, min_keep: float) -> int:
    """The fewest channels a group may keep: a `min_keep` share of it, and at least one."""
    return max(1, int(np.ceil(min_keep * group.size - 1e-9)))


Constraint = tuple[np.ndarray, int]  # (channels of one layer, step its kept count must be a multiple of)


def _align(group: ChannelGroup, kept: np.ndarray, scores: np.ndarray, constraints: tuple[Constraint, ...],
           floor: int, one_block: bool, budget: int | None = None) -> tuple[np.ndarray, bool]:
    """Put every constrained layer's kept count on its nearest step; returns (kept, one-block floor applied).
    `budget`: the count asked (default len(kept)), which raising narrow layers may not exceed unless paid back.

    1. A layer left with fewer channels than its step (but some) is raised to one step
       with its best dropped channels, if the overshoot can be paid back by dropping whole
       steps of the worst kept channels from layers that keep at least two steps.
    2. Every layer with at least one step goes to its nearest multiple of the step: up (its
       best dropped channels come back) when it is at least half a step above the multiple
       below, else down (its worst kept channels go), so each layer lands within half a
       step of what was asked.
    A drop that would break the group's floor or empty a member slot is not made, so a
    layer may stay off its step. With `one_block`, a layer raised to one step keeps it even
    when the overshoot cannot be paid back (a layer narrower than one block runs off the
    runtime's fast path, so that "floor" can keep more than asked, and is reported).
    """
    aligner = _StepAligner(group, kept, scores, floor, len(kept) if budget is None else budget)
    floored = aligner.raise_small_layers(constraints, one_block)
    aligner.round_to_steps(constraints)
    return np.flatnonzero(aligner.mask), floored


class _StepAligner:
    """The kept mask of one group while `_align` moves its layers onto their steps (see `_align`)."""

    def __init__(self, group: ChannelGroup, kept: np.ndarray, scores: np.ndarray, floor: int, budget: int):
        self.mask = np.zeros(group.size, dtype=bool)
        self.mask[kept] = True
        self.budget, self.scores, self.floor = budget, scores, floor
        self.slot_channels = group.slot_channel_sets
        self.locked = locked_mask(group)

    def try_drop(self, drop: np.ndarray) -> bool:
        """Drop `drop` unless that breaks the floor or empties a member slot."""
        mask = self.mask
        if int(mask.sum()) - len(drop) < self.floor:
            return False
        mask[drop] = False
        if all(mask[c].any() for c in self.slot_channels):
            return True
        mask[drop] = True
        return False

    def worst_kept(self, channels: np.ndarray, n: int) -> np.ndarray:
        """Up to `n` kept channels of `channels` with the lowest scores, never a pinned one."""
        mine = channels[self.mask[channels] & ~self.locked[channels]]
        return mine[np.argsort(self.scores[mine], kind="stable")[:n]]

    def drop_worst(self, channels: np.ndarray, n: int) -> bool:
        """Drop the `n` worst unpinned kept channels of `channels`, if there are `n` and `try_drop` allows it."""
        drop = self.worst_kept(channels, n)
        return len(drop) == n and self.try_drop(drop)

    def best_dropped(self, channels: np.ndarray, n: int) -> np.ndarray:
        dropped = channels[~self.mask[channels]]
        return dropped[np.argsort(-self.scores[dropped], kind="stable")[:n]]

    def raise_small_layers(self, constraints: tuple[Constraint, ...], one_block: bool) -> bool:
        """Step 1: a layer below one step is raised to it, paid back by whole steps of the layers that see no
        smaller layer's channels (each DenseNet conv's own output, not the concatenations); returns whether
        the one-block floor kept more than the budget."""
        mask = self.mask
        minimal = [k for k, (c, _) in enumerate(constraints)
                   if not any(len(o) < len(c) and np.isin(o, c).all() for o, _ in constraints)]
        for channels, step in constraints:
            here = int(mask[channels].sum())
            if not 0 < here < step <= len(channels):
                continue
            before = mask.copy()
            mask[self.best_dropped(channels, step - here)] = True
            while mask.sum() > self.budget:
                options = sorted((self.scores[self.worst_kept(*constraints[k])].sum() / constraints[k][1], k)
                                 for k in minimal if mask[constraints[k][0]].sum() >= 2 * constraints[k][1]
                                 and not np.isin(constraints[k][0], channels).any())
                if not any(self.drop_worst(*constraints[k]) for _, k in options):
                    break
            if mask.sum() > self.budget and not one_block:
                mask[:] = before
        return bool(mask.sum() > self.budget)

    def round_to_steps(self, constraints: tuple[Constraint, ...]) -> None:
        """Step 2: the other layers to their nearest multiple of the step, narrow layers first; overlapping
        layers may need another pass."""
        for _ in range(3):
            changed = False
            for channels, step in sorted(constraints, key=lambda c: len(c[0])):
                here = int(self.mask[channels].sum())
                extra = here % step
                if not extra or here < step:  # on the step, or below one step (left as step 1 decided)
                    continue
                if 2 * extra >= step and int((~self.mask[channels]).sum()) >= step - extra:
                    self.mask[self.best_dropped(channels, step - extra)] = True
                    changed = True
                else:
                    changed |= self.drop_worst(channels, extra)
            if not changed:
                break


def _off_step(group: ChannelGroup, kept: np.ndarray, constraints: tuple[Constraint, ...]) -> int:
    """How many constrained layers keep a count of channels that is not a multiple of their step."""
    mask = group.kept_mask(kept)
    return sum(1 for channels, step in constraints if int(mask[channels].sum()) % step)


def _assemble(groups_and_quotas, scores, constraints, min_keep, one_block=False) -> Planned:
    """groups_and_quotas: (group, [(channels, how many of them to keep), ...]) per group; a quota never keeps
    fewer than its pinned channels."""
    keep, sizes, rounding = {}, {}, {}
    for g, quotas in groups_and_quotas:
        floor = guard(g, min_keep)
        locked = locked_mask(g)
        quotas = [(c, max(n, int(locked[c].sum()))) for c, n in quotas]
        asked = sum(n for _, n in quotas)
        if asked < floor:
            quotas, asked = [(np.arange(g.size), floor)], floor
        if asked >= g.size:
            continue  # nothing asked: rounding alone never prunes
        kept = _keep_best(g, scores[g.id], quotas)
        budget = len(kept)
        cons, floored = constraints.get(g.id, ()), False
        if cons and g.equal_counts:  # equal parts first, on their step, so that aligning the layers keeps them equal
            kept = equalise(g, kept, scores[g.id], cons)
            if kept is None:
                continue
        if cons:
            kept, floored = _align(g, kept, scores[g.id], cons, floor, one_block, budget)
        kept = equalise(g, kept, scores[g.id], cons)  # equal counts where the caller's code splits equally
        if kept is None:
            continue
        if cons:
            rounding[g.id] = Rounding(max(step for _, step in cons), asked, len(kept), floored, _off_step(g, kept, cons))
        keep[g.id] = tuple(np.asarray(kept, dtype=np.int64).tolist())  # python ints
        sizes[g.id] = g.size
    return Planned(PrunePlan(keep, sizes), rounding)


def plan_local(graph: DependencyGraph, scores: Mapping[str, np.ndarray], ratio: float | Mapping[str, float],
               constraints: Mapping[str, tuple[Constraint, ...]] | None = None, min_keep: float = 0.0,
               partitions: Mapping[str, tuple[np.ndarray, ...]] | None = None, one_block: bool = False) -> Planned:
    """Remove ceil(ratio * n) channels of each part of each prunable group (n: the part's unpinned channels).

    Parts are `producer_partitions` (computed when not given): every layer that writes
    its own channels of a group loses the ratio, as in a DenseNet block. `ratio` may map
    group ids to their own ratio. Pinned channels are kept and do not count in n; a part
    keeps at least one channel (a pinned one, or one of its own).
    """
    ratio_of = (lambda g: ratio.get(g.id, 0.0)) if isinstance(ratio, Mapping) else (lambda g: ratio)
    parts = partitions or {}
    quotas = []
    for g in graph.prunable:
        r, locked = ratio_of(g), locked_mask(g)
        quotas.append((g, [(c, len(c) - _part_removal(c, locked, r)) for c in parts.get(g.id) or producer_partitions(g)]))
    return _assemble(quotas, scores, constraints or {}, min_keep, one_block)


def _part_removal(channels: np.ndarray, locked: np.ndarray, ratio: float) -> int:
    """ceil(ratio * free) of a part's free (unpinned) channels, leaving the part at least one channel."""
    pinned = int(locked[channels].sum())
    free = len(channels) - pinned
    return max(0, min(free - (0 if pinned else 1), int(np.ceil(ratio * free - 1e-9))))


def repeated_layers(groups: Sequence[ChannelGroup]) -> list[list[int]]:
    """Indices of `groups` that are one group repeated in every layer of a stack (`layers.0.mlp`, `layers.1.mlp`...):
    same size, and the same parameter slots once the layer indices in their names are erased."""
    classes: dict[tuple, list[int]] = {}
    for k, g in enumerate(groups):
        names = frozenset((_LAYER_INDEX.sub(".#.", f".{s.name}."), s.dim, s.role)
                          for s in g.members if s.role in (Role.PRODUCER, Role.CONSUMER))
        if names:
            classes.setdefault((g.size, names), []).append(k)
    return [ks for ks in classes.values() if len(ks) > 1]


_LAYER_INDEX = re.compile(r"\.\d+\.")


def plan_global(graph: DependencyGraph, scores: Mapping[str, np.ndarray], ratio: float,
                constraints: Mapping[str, tuple[Constraint, ...]] | None = None, min_keep: float = 0.0,
                one_block: bool = False, uniform_layers: bool = False,
                costs: Mapping[str, float] | None = None) -> Planned:
    """Rank all channels on scores divided by their group's mean score; remove the lowest `ratio` share.

    With `costs` (what removing one channel of a group saves, e.g. ms of latency, > 0; a group it
    does not name costs the mean), each normalised score is further divided by its group's cost
    over the mean cost: channels are ranked by importance per unit saved, so the channels that
    save the most per unit of importance go first. Each group's `guard` channels with the best
    scores are never candidates, so no group collapses below the guard however the ranking falls;
    pinned channels are never candidates either, and count towards the guard. `ratio` is a share of
    the channels that may go (the prunable groups' unpinned channels).
    With `uniform_layers`, a group repeated in every layer of a stack loses, in every layer, the
    mean of what the ranking took from its copies (so configs that hold one size for all layers
    can describe the result).
    """
    groups = graph.prunable
    candidates = []  # (normalised score, group index) of every channel that may go
    relative_cost = _relative_costs(groups, costs)
    for k, g in enumerate(groups):
        s = scores[g.id] / (scores[g.id].mean() or 1.0) / relative_cost[k]
        n = g.size - max(guard(g, min_keep), len(g.pinned))  # channels that may go
        candidates.append(np.stack([np.sort(s[~locked_mask(g)])[:n], np.full(n, k)], 1))
    flat = np.concatenate(candidates) if candidates else np.empty((0, 2))
    total = sum(g.free_channels for g in groups)
    n_remove = min(len(flat), int(np.ceil(ratio * total - 1e-9)))
    removed = np.bincount(flat[np.argsort(flat[:, 0], kind="stable")[:n_remove], 1].astype(int), minlength=len(groups))
    if uniform_layers:
        for copies in repeated_layers(groups):
            removed[copies] = int(np.rint(removed[copies].mean()))
    quotas = [(g, [(np.arange(g.size), g.size - int(removed[k]))]) for k, g in enumerate(groups)]
    return _assemble(quotas, scores, constraints or {}, min_keep, one_block)


def _relative_costs(groups: Sequence[ChannelGroup], costs: Mapping[str, float] | None) -> np.ndarray:
    """Each group's cost per channel over the mean cost of the groups `costs` names (1: the mean, for a
    group it does not name)."""
    named = [costs[g.id] for g in groups if costs and g.id in costs]
    if not named:
        return np.ones(len(groups))
    mean = float(np.mean(named))
    return np.array([costs[g.id] / mean if g.id in costs else 1.0 for g in groups])


def plan_to_budget(make: Callable[[float], Planned], count: Callable[[PrunePlan], float], goal: float,
                   what: str) -> Planned:
    """The least pruning whose count is <= goal: bisection on the strategy's ratio.

    Plans change one channel at a time as the ratio grows, so the result lands within one
    channel step of the target. Raises InputError if even the strongest plan the guards
    allow stays above it.
    """
    lo, hi = 0.0, 0.999
    strongest = make(hi)
    if count(strongest.plan) > goal:
        raise InputError(f"{what} target {goal:,} cannot be reached without collapsing a group: the most the guards "
                         f"allow leaves {count(strongest.plan):,.0f}; raise the target or lower min_keep")
    best = strongest
    for _ in range(40):
        mid = (lo + hi) / 2
        planned = make(mid)
        if count(planned.plan) <= goal:
            hi, best = mid, planned
        else:
            lo = mid
    return best
