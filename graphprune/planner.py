"""Planning: turn scores and a strategy into a PrunePlan, plain data {group id: kept channels}.

Local scope removes round(ratio * size) channels of every prunable group; global scope
ranks all channels of all prunable groups together on scores normalised by their group's
mean (so groups of different layer sizes compare) and removes the lowest ratio share.
Guards: a group always keeps at least one channel (and at least one position of every
member slot, so no layer is left with zero inputs), and kept counts are multiples of
`round_to` where the group is big enough.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import InputError
from .groups import ChannelGroup, DependencyGraph

PLAN_FORMAT = 1


@dataclass(frozen=True)
class PrunePlan:
    """Kept channel indices per group id, with each group's original size to check replays."""

    keep: Mapping[str, tuple[int, ...]]
    sizes: Mapping[str, int]

    def to_json(self) -> str:
        groups = {gid: {"size": self.sizes[gid], "keep": list(self.keep[gid])} for gid in sorted(self.keep)}
        return json.dumps({"format": PLAN_FORMAT, "groups": groups}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "PrunePlan":
        try:
            data = json.loads(text)
            groups = data["groups"]
            keep = {gid: tuple(int(i) for i in g["keep"]) for gid, g in groups.items()}
            sizes = {gid: int(g["size"]) for gid, g in groups.items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"not a graphprune plan ({type(exc).__name__}: {exc}); pass the text of a plan.json") from exc
        return cls(keep, sizes)

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


def _rounded(n_keep: int, size: int, round_to: int) -> int:
    if round_to <= 1 or size <= round_to:
        return n_keep
    return int(min(size, max(round_to, round(n_keep / round_to) * round_to)))


def _with_slot_guard(group: ChannelGroup, kept: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Add, for any member slot left with no position, its best-scored channel."""
    kept_set = set(kept.tolist())
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))  # rank 0 = best channel
    for index_map in group.members.values():
        if index_map.size and not kept_set.intersection(index_map.tolist()):
            kept_set.add(int(index_map[np.argmin(rank[index_map])]))
    return np.array(sorted(kept_set), dtype=np.int64)


def _keep_best(group: ChannelGroup, scores: np.ndarray, n_keep: int) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    return _with_slot_guard(group, np.sort(order[:n_keep]), order)


def plan_local(graph: DependencyGraph, scores: Mapping[str, np.ndarray], ratio: float, round_to: int = 1) -> PrunePlan:
    keep, sizes = {}, {}
    for g in graph.prunable:
        n_remove = min(g.size - 1, int(np.floor(ratio * g.size + 0.5)))
        n_keep = _rounded(g.size - n_remove, g.size, round_to)
        if n_keep < g.size:
            keep[g.id] = tuple(int(i) for i in _keep_best(g, scores[g.id], n_keep))
            sizes[g.id] = g.size
    return PrunePlan(keep, sizes)


def plan_global(graph: DependencyGraph, scores: Mapping[str, np.ndarray], ratio: float, round_to: int = 1) -> PrunePlan:
    groups = graph.prunable
    if not groups:
        return PrunePlan({}, {})
    normalised = [scores[g.id] / (scores[g.id].mean() or 1.0) for g in groups]
    flat = np.concatenate(normalised)
    n_remove = int(np.floor(ratio * flat.size + 0.5))
    threshold = np.sort(flat)[n_remove - 1] if n_remove > 0 else -np.inf
    keep, sizes = {}, {}
    for g, s in zip(groups, normalised):
        n_keep = _rounded(max(1, int(np.count_nonzero(s > threshold))), g.size, round_to)
        if n_keep < g.size:
            keep[g.id] = tuple(int(i) for i in _keep_best(g, scores[g.id], n_keep))
            sizes[g.id] = g.size
    return PrunePlan(keep, sizes)
