"""Planning: turn scores and a strategy into a PrunePlan, plain data {group id: kept channels}.

Local scope removes ceil(ratio * size) channels of every prunable group (at least the
share asked, never all); global scope
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
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
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


def _keep_best(group: ChannelGroup, scores: np.ndarray, n_keep: int) -> np.ndarray:
    """The n_keep best channels, adjusted so that every member slot keeps at least one position.

    A slot left empty gets its best channel back; to stay at n_keep, the worst kept channels
    that are not the last one of some slot are dropped instead.
    """
    order = np.argsort(-scores, kind="stable")  # best first
    kept = np.zeros(group.size, dtype=bool)
    kept[order[:n_keep]] = True
    slot_channels = [np.unique(m) for m in group.members.values() if m.size]
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
        if not kept[c] or int(c) in required:
            continue
        kept[c] = False
        if all(kept[channels].any() for channels in slot_channels):
            excess -= 1
        else:
            kept[c] = True
    return np.flatnonzero(kept)


def plan_local(graph: DependencyGraph, scores: Mapping[str, np.ndarray], ratio: float, round_to: int = 1) -> PrunePlan:
    keep, sizes = {}, {}
    for g in graph.prunable:
        n_remove = min(g.size - 1, int(np.ceil(ratio * g.size - 1e-9)))
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
    n_remove = int(np.ceil(ratio * flat.size - 1e-9))
    threshold = np.sort(flat)[n_remove - 1] if n_remove > 0 else -np.inf
    keep, sizes = {}, {}
    for g, s in zip(groups, normalised):
        n_keep = _rounded(max(1, int(np.count_nonzero(s > threshold))), g.size, round_to)
        if n_keep < g.size:
            keep[g.id] = tuple(int(i) for i in _keep_best(g, scores[g.id], n_keep))
            sizes[g.id] = g.size
    return PrunePlan(keep, sizes)
