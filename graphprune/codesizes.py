"""Sizes the caller's code computes from a width: plans its unchanged code can run (`result.module`).

`y = list(self.cv1(x).chunk(2, 1))` splits at half of the *current* width. The traced graph
records the split as constant sizes and the rewrite re-cuts them to any kept counts, but the
caller's code, run pruned, cuts where chunk(2) cuts: both halves must keep the same number of
channels (each half may keep different ones). The same holds for `x.split(self.c, 1)` once
`self.c` is updated, and for `split([c, c])`. The split's rule records an `EqualParts` on its
input slot (positions); here it becomes a constraint on the group's channels:

    m_p[c]   positions of part p that map to group channel c, less min_p m_p[c] (what all parts hold alike)
    all m_p equal                          the counts are equal whatever is kept: nothing to do
    supports disjoint, one multiplicity m  kept(p) = m x (channels kept in p) + common: equal channel counts
    anything else                          the group is frozen (the planner keeps equal channel counts only)

`equalise` then makes a planned group's parts keep equal counts: they share what the plan kept,
each keeping its best channels.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import numpy as np
import torch.fx as fx

from .groups import ChannelGroup, DependencyGraph, EqualCounts, EqualParts


def attach_equal_counts(graph: DependencyGraph, found: Iterable[EqualParts]) -> DependencyGraph:
    """`graph` with every EqualParts as an EqualCounts on its group, or the group frozen where none can hold."""
    counts: dict[str, list[EqualCounts]] = {}
    frozen: dict[str, str] = {}
    for equal in found:
        group = graph.group_of(equal.slot)
        if group is None or group.frozen:
            continue
        constraint = _on_channels(group, equal)
        if isinstance(constraint, str):
            frozen.setdefault(group.id, constraint)
        elif constraint is not None:
            counts.setdefault(group.id, []).append(constraint)
    groups = tuple(replace(g, equal_counts=tuple(counts[g.id])) if g.id in counts else g for g in graph.groups)
    graph = replace(graph, groups=groups)
    for gid, reason in frozen.items():
        graph = graph.with_frozen((gid,), reason)
    return graph


def _on_channels(group: ChannelGroup, equal: EqualParts) -> EqualCounts | str | None:
    """The EqualParts as group channels: None when it always holds, a reason when it never can."""
    index_map = group.members[equal.slot]
    multiplicity = np.stack([np.bincount(index_map[p], minlength=group.size) for p in equal.parts])
    multiplicity -= multiplicity.min(axis=0)  # channels every part holds alike add alike to every count
    classes = list({m.tobytes(): m for m in multiplicity}.values())  # identical parts keep equal counts anyway
    if len(classes) == 1:
        return None
    supports = [np.flatnonzero(m) for m in classes]
    disjoint = len(np.unique(np.concatenate(supports))) == sum(len(s) for s in supports)
    uniform = len({int(v) for m, s in zip(classes, supports) for v in np.unique(m[s])}) == 1
    if disjoint and uniform and all(len(s) for s in supports):
        return EqualCounts(tuple(supports), equal.where)
    return (f"{equal.where} splits it into {len(equal.parts)} equal parts, sizes the code computes from the width, "
            "and the parts hold the group's channels unevenly (shared or repeated), so graphprune cannot keep "
            "their counts equal")


def equalise(group: ChannelGroup, kept: np.ndarray, scores: np.ndarray,
             steps: Sequence[tuple[np.ndarray, int]] = ()) -> np.ndarray | None:
    """`kept` with every EqualCounts of `group` holding: the parts of a constraint share its kept total, k =
    total / parts each (to the nearest multiple of `part_step`, as `planner._align` rounds layers; below one
    step, rounded down), each part keeping its best k.

    Coarser constraints first, then finer ones (which keep their union's count where it divides), repeated
    until none changes, at most `size` rounds. None when they do not settle or a member slot would be emptied
    (the group is then kept whole).
    """
    if not group.equal_counts:
        return kept
    mask = np.zeros(group.size, dtype=bool)
    mask[kept] = True
    pinned = np.zeros(group.size, dtype=bool)
    pinned[group.pinned] = True
    slot_channels = group.slot_channel_sets
    order = sorted(group.equal_counts, key=lambda c: -len(c.parts[0]))
    for _ in range(group.size + 1):
        changed = False
        for constraint in order:
            here = [int(mask[p].sum()) for p in constraint.parts]
            step, share = part_step(constraint, steps), sum(here) / len(here)
            k = min(int(np.ceil(share / step - 0.5)) * step or int(share), min(len(p) for p in constraint.parts))
            k = max(k, max(int(pinned[p].sum()) for p in constraint.parts))  # pinned channels always stay
            if all(n == k for n in here):
                continue
            for part, n in zip(constraint.parts, here):
                if n < k:
                    mask[part[~mask[part]][np.argsort(-scores[part[~mask[part]]], kind="stable")[:k - n]]] = True
                elif not _drop_worst(mask, part, n - k, scores, slot_channels, pinned):
                    return None
            changed = True
        if not changed:
            return np.flatnonzero(mask)
    return None


def part_step(constraint: EqualCounts, steps: Sequence[tuple[np.ndarray, int]]) -> int:
    """The step each part's count should be a multiple of, so that the layers whose channels are whole parts stay
    on their step: a layer writing m whole parts with step s needs m x count to be a multiple of s."""
    step = 1
    for channels, s in steps:
        covered = [np.isin(p, channels).all() for p in constraint.parts]
        inside = sum(covered)
        if inside and sum(len(p) for p, c in zip(constraint.parts, covered) if c) == len(channels):
            step = np.lcm(step, s // np.gcd(s, inside))
    return int(step)


def _drop_worst(mask: np.ndarray, part: np.ndarray, n: int, scores: np.ndarray, slot_channels,
                pinned: np.ndarray) -> bool:
    """Drop the `n` worst kept channels of `part`, none pinned and none a member slot's last; False when that
    cannot be done."""
    mine = part[mask[part] & ~pinned[part]]
    for c in mine[np.argsort(scores[mine], kind="stable")]:
        if n <= 0:
            break
        mask[c] = False
        if all(mask[s].any() for s in slot_channels if c in s):
            n -= 1
        else:
            mask[c] = True
    return n <= 0


SPLIT_KEY = "gp_split"  # node meta: the SplitSizes of a split the rewrite re-cut


@dataclass(frozen=True)
class SplitSizes:
    """A split re-cut by the rewrite: its parts' sizes before and after, and the op and line of code (`where`)."""

    old: tuple[int, ...]
    new: tuple[int, ...]
    where: str

    @property
    def computable(self) -> bool:
        """Whether code that computes the sizes from the width or from one size (chunk(n), split(c): the old
        sizes have that form) can compute the new ones: equal parts stay equal (chunk(n), split(self.c))."""
        if len(set(self.old)) == 1:
            return len(set(self.new)) == 1
        return not _regular(self.old) or _regular(self.new)


def _regular(sizes: Sequence[int]) -> bool:
    """Sizes chunk(n) of their total gives, or one size for every part but a smaller last one (split(c))."""
    n, total = len(sizes), sum(sizes)
    step = -(-total // n)
    chunked = [max(0, min(step, total - k * step)) for k in range(n)]
    return list(sizes) == chunked or (all(s == sizes[0] for s in sizes[:-1]) and 0 < sizes[-1] <= sizes[0])


def _module_of(node: fx.Node) -> str:
    """The qualified name of the innermost module whose forward made `node` (both frontends keep
    `nn_module_stack`; fx leaves it out in the model's own forward): "" for the model itself."""
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else ""


def split_sizes(gm: fx.GraphModule) -> dict[str, list[SplitSizes]]:
    """The re-cut splits of a pruned graph, by the module whose forward makes them."""
    found: dict[str, list[SplitSizes]] = {}
    for node in gm.graph.nodes:
        sizes = node.meta.get(SPLIT_KEY)
        if sizes is not None and sizes.old != sizes.new:
            found.setdefault(_module_of(node), []).append(sizes)
    return found


def uncomputable_splits(gm: fx.GraphModule) -> list[str]:
    """One line per re-cut split whose new sizes the caller's code, which computes them (chunk, split by a size),
    cannot compute: where `result.module` breaks, whatever op then receives the wrong width."""
    return [f"{s.where} splits {sum(s.old)} channels into {list(s.old)}, sizes the code computes from the width "
            f"or from one size, but the plan keeps {list(s.new)} of them, which it cannot compute"
            for found in split_sizes(gm).values() for s in found if not s.computable]
