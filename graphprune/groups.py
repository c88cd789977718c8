"""Core data types of the analysis: slots, couplings, channel groups and the dependency graph.

A *slot* is one channel dimension: dim `dim` of the tensor an FX node produces, or of a
parameter/buffer. A *coupling* says that position `i` of one slot and position `j` of
another are the same channel (arrays of pairs, never one object per channel). A
*channel group* is a connected set of slots; its channels are the equivalence classes
of positions under all couplings, and every member keeps an `index_map`
(position -> group channel) as one integer array.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import numpy as np


@functools.total_ordering
class Role(enum.Enum):
    """What a slot is: an activation, or a parameter dim that writes (PRODUCER) or reads (CONSUMER) the channel."""

    ACTIVATION = "activation"
    PRODUCER = "producer"  # conv/linear output rows, biases, norm affine params, layer scales, embeddings
    CONSUMER = "consumer"  # conv/linear input columns: zeroing them hides a channel from everything downstream
    BUFFER = "buffer"  # running statistics: sliced, but not part of importance

    def __lt__(self, other: "Role") -> bool:
        return self.value < other.value

    # members are singletons compared by identity: the identity hash agrees with == and runs in C (Enum's is Python)
    __hash__ = object.__hash__


class Slot(NamedTuple):
    """A named tuple: slots key most tables of the analysis and the planner, and a tuple hashes in C."""

    name: str  # FX node name (activations) or qualified parameter/buffer name
    dim: int
    role: Role = Role.ACTIVATION  # part of identity: a get_attr node may share its parameter's name

    def __str__(self) -> str:
        return f"{self.name}[dim {self.dim}]"

    @property
    def is_param(self) -> bool:
        return self.role is not Role.ACTIVATION


@dataclass(frozen=True)
class Coupling:
    """Positions `a_index[k]` of slot `a` and `b_index[k]` of slot `b` carry the same channel.

    `None` for both indices means the identity pairing (both slots have the same size).
    """

    a: Slot
    b: Slot
    a_index: np.ndarray | None = None
    b_index: np.ndarray | None = None


@dataclass(frozen=True)
class Freeze:
    """The group holding `slot` must keep every channel, because of `reason`.

    `kept_whole`: a rule proved that these channels lie on a dim no group cuts (a per-head norm weight broadcast
    over the head_dim): they stay whole by construction, and no compression is lost on them.
    """

    slot: Slot
    reason: str
    kept_whole: bool = False


@dataclass(frozen=True, eq=False)
class EqualParts:
    """The caller's code computes the sizes of these parts of `slot` from its width (`x.chunk(n)`,
    `x.split(self.c)`): every part (positions of `slot`) must keep as many positions as the others.
    `where` names the op and the line of code that bakes the split."""

    slot: Slot
    parts: tuple[np.ndarray, ...]
    where: str


@dataclass(frozen=True, eq=False)
class EqualCounts:
    """An EqualParts on a group: every one of `parts` (disjoint sets of group channels) keeps as many
    channels as the others, for the code at `where`."""

    parts: tuple[np.ndarray, ...]
    where: str


@dataclass(frozen=True)
class Pin:
    """Channels of a group that must be kept because of `reason` (a freeze whose slot covers only them).

    A frozen slot keeps all its positions exactly when every group channel its index map
    reaches is kept; the group's other channels stay prunable.
    """

    channels: tuple[int, ...]  # sorted group channels
    reason: str

    def __str__(self) -> str:
        return f"channels {channel_ranges(np.asarray(self.channels))} kept: {self.reason}"


@dataclass(frozen=True)
class Effect:
    """What a rule says about one node: the channel dim of its output, couplings, freezes, and the parts of
    an input whose kept counts the caller's code needs equal.

    `out_dim` is an int, None (no channel dim) or, for ops returning a tuple, a tuple of those.
    """

    out_dim: int | None | tuple = None
    couplings: tuple[Coupling, ...] = ()
    freezes: tuple[Freeze, ...] = ()
    equal_parts: tuple[EqualParts, ...] = ()


def channel_ranges(channels: np.ndarray) -> str:
    """Sorted group channels as ranges: [0..7, 16..23] -> "0-7,16-23" (long lists shortened)."""
    channels = np.unique(channels)
    breaks = np.flatnonzero(np.diff(channels) != 1) + 1
    runs = [f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in np.split(channels, breaks)]
    return ",".join(runs) if len(runs) <= 6 else ",".join(runs[:5]) + f",... ({len(channels)} channels)"


_ROLE_VERB = {"producer": "writes", "consumer": "reads", "buffer": "stats"}


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Slots whose channels are removed together.

    `members[slot]` maps each position of the slot to a channel of the group (0..size-1).
    """

    id: str
    size: int
    members: Mapping[Slot, np.ndarray]
    frozen_reasons: tuple[str, ...] = ()  # the whole group is kept
    pins: tuple[Pin, ...] = ()  # channels kept by freezes that reach only part of the group (never all of it)
    equal_counts: tuple[EqualCounts, ...] = ()  # parts the caller's code needs to keep equal counts (codesizes.py)

    @property
    def frozen(self) -> bool:
        return bool(self.frozen_reasons)

    @property
    def prunable(self) -> bool:
        return not self.frozen and self.size > 1

    @functools.cached_property
    def pinned(self) -> np.ndarray:
        """Sorted group channels that every plan keeps (the union of the pins; empty when none); read-only."""
        return _read_only(np.unique(np.fromiter((c for p in self.pins for c in p.channels), np.int64)))

    @property
    def free_channels(self) -> int:
        """How many channels a plan may remove: all but the pinned ones (0 for a frozen group)."""
        return 0 if self.frozen else self.size - len(self.pinned)

    @functools.cached_property
    def member_channels(self) -> Mapping[Slot, tuple[np.ndarray, np.ndarray]]:
        """Per member slot that has positions: (the group channels it covers, sorted; how many of its
        positions map to each). Computed once per group; the arrays are read-only."""
        def covered(index_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            per_channel = np.bincount(index_map, minlength=self.size)  # np.unique's counts, in O(size)
            channels = np.flatnonzero(per_channel)
            return _read_only(channels), _read_only(per_channel[channels])

        return {s: c for s, c in self.per_index_map(covered).items() if self.members[s].size}

    def per_index_map(self, derive: Callable[[np.ndarray], Any]) -> dict[Slot, Any]:
        """derive(index map) of every member, computed once per distinct map (build_groups shares equal maps)."""
        done: dict[int, Any] = {}
        return {s: done[id(m)] if id(m) in done else done.setdefault(id(m), derive(m)) for s, m in self.members.items()}

    @functools.cached_property
    def slot_channel_sets(self) -> tuple[np.ndarray, ...]:
        """The distinct channel sets of the member slots: every slot keeps a position exactly when
        each of these sets keeps a channel."""
        sets = {}
        for channels, _ in self.member_channels.values():
            sets.setdefault(channels.tobytes(), channels)
        return tuple(sets.values())

    def describe(self) -> list[str]:
        """One line per module of the group: what it does with the channels and which group channels it covers.

        Module names are those `ignore` accepts; a member's covered channels are the values of
        its index map (position -> group channel), so the members of a concatenated group
        show their offsets.
        """
        if self.frozen:
            state = "frozen: " + "; ".join(self.frozen_reasons)
        else:
            state = "prunable" if self.size > 1 else "single channel"
        lines = [f"group {self.id}  size {self.size}  {state}"]
        lines += [f"    partly frozen: {pin}" for pin in self.pins]
        by_module: dict[tuple, list[str]] = {}
        for slot, index_map in self.members.items():
            if not slot.is_param or not index_map.size:
                continue
            owner, _, attr = slot.name.rpartition(".")
            permuted = bool(np.any(np.diff(index_map) < 0))
            key = (owner or "(model)", slot.role.value, channel_ranges(index_map), permuted)
            by_module.setdefault(key, []).append(attr)
        if not by_module:
            lines.append("    (no parameters: activations only)")
        lines += [f"    equal counts in {len(c.parts)} parts of {len(c.parts[0])} channels, for {c.where}"
                  for c in self.equal_counts]
        for (owner, role, ranges, permuted), attrs in sorted(by_module.items(),
                                                             key=lambda kv: (kv[0][1] != "producer", kv[0][0])):
            order = " (permuted)" if permuted else ""
            lines.append(f"    {_ROLE_VERB.get(role, role):6s} {owner:40s} {','.join(sorted(attrs)):24s} "
                         f"channels {ranges} of {self.size}{order}")
        return lines

    def with_pin(self, channels: np.ndarray, reason: str) -> "ChannelGroup":
        """A copy that keeps `channels` with `reason` (a Pin). As for a freeze the analysis finds, the group is
        frozen whole instead (all reasons kept) when no channel would stay free, or when no layer's weight
        writes or reads a free one."""
        if self.frozen:
            return replace(self, frozen_reasons=self.frozen_reasons + (reason,))
        channels = np.unique(np.asarray(channels, dtype=np.int64))
        free = np.ones(self.size, dtype=bool)
        free[self.pinned] = False
        free[channels] = False
        weights = (m for s, m in self.members.items() if s.role in (Role.PRODUCER, Role.CONSUMER))
        if _saves_nothing(free, weights):
            return replace(self, frozen_reasons=tuple(p.reason for p in self.pins) + (reason,), pins=())
        return replace(self, pins=self.pins + (Pin(tuple(channels.tolist()), reason),))

    def kept_mask(self, kept_channels) -> np.ndarray:
        """True at the group channels in `kept_channels`: a member keeps position i when mask[index_map[i]]."""
        keep = np.zeros(self.size, dtype=bool)
        keep[np.asarray(kept_channels, dtype=np.int64)] = True
        return keep

    def kept_positions(self, slot: Slot, kept_channels) -> np.ndarray:
        """Positions of `slot` whose channel is in `kept_channels` (sorted)."""
        return np.flatnonzero(self.kept_mask(kept_channels)[self.members[slot]])

    def kept_positions_by_slot(self, kept_channels) -> dict[Slot, np.ndarray]:
        """kept_positions of every member: read-only arrays, one per distinct index map."""
        mask = self.kept_mask(kept_channels)
        return self.per_index_map(lambda index_map: _read_only(np.flatnonzero(mask[index_map])))


@dataclass(frozen=True, eq=False)
class DependencyGraph:
    """All channel groups of a traced model, and the slot graph they were read from."""

    groups: tuple[ChannelGroup, ...]
    slot_edges: tuple[tuple[Slot, Slot], ...]  # the couplings' slot pairs: groups are the connected components
    channel_dims: Mapping[str, object] = field(default_factory=dict)  # FX node name -> its output's channel dim
    unsupported: tuple[str, ...] = ()  # ops the analysis met without a rule (their channels are frozen)
    probed: tuple[str, ...] = ()  # ops without a rule that probing showed to be channel-wise

    def with_frozen(self, group_ids: Iterable[str], reason: str) -> "DependencyGraph":
        """A copy where the given groups are frozen whole with `reason` (e.g. the user's `ignore`); their pins'
        reasons become reasons of the whole freeze."""
        ids = set(group_ids)
        groups = tuple(replace(g, frozen_reasons=g.frozen_reasons + tuple(p.reason for p in g.pins) + (reason,), pins=())
                       if g.id in ids else g for g in self.groups)
        return replace(self, groups=groups)

    def with_pinned(self, channels: Mapping[str, np.ndarray], reason: str) -> "DependencyGraph":
        """A copy where group `id` keeps `channels[id]` with `reason` (ChannelGroup.with_pin)."""
        return replace(self, groups=tuple(g.with_pin(channels[g.id], reason) if g.id in channels else g
                                          for g in self.groups))

    @property
    def prunable_channels(self) -> int:
        """Channels a plan may remove: those of the prunable groups, less their pinned ones."""
        return sum(g.free_channels for g in self.prunable)

    def __post_init__(self):
        object.__setattr__(self, "_by_id", {g.id: g for g in self.groups})

    @functools.cached_property
    def _by_slot(self) -> dict[Slot, ChannelGroup]:
        """Slot -> its group, built on first use (a graph rebuilt by `replace` may never be asked)."""
        return {s: g for g in self.groups for s in g.members}

    def group(self, group_id: str) -> ChannelGroup:
        return self._by_id[group_id]

    def group_of(self, slot: Slot) -> ChannelGroup | None:
        return self._by_slot.get(slot)

    @property
    def prunable(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if g.prunable)

    @property
    def frozen(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if g.frozen)

    def describe(self) -> str:
        """Human-readable listing: one block per group (ChannelGroup.describe)."""
        return "\n".join(line for g in self.groups for line in g.describe())

    def to_json(self) -> dict:
        return {"groups": [{
            "id": g.id,
            "size": g.size,
            "frozen_reasons": list(g.frozen_reasons),
            "pins": [{"channels": list(p.channels), "reason": p.reason} for p in g.pins],
            "members": [{"name": s.name, "dim": s.dim, "role": s.role.value} for s in sorted(g.members, key=str)],
        } for g in self.groups]}

    def to_graphml(self, path: str) -> None:
        """Export the slot graph (one node per slot, with its group id, role and frozen flag; one edge per
        coupling) as GraphML for yEd/Gephi/networkx, written atomically."""
        import xml.etree.ElementTree as ET

        from .atomic import write_atomically

        root = ET.Element("graphml", xmlns="http://graphml.graphdrawing.org/xmlns")
        for key, kind in (("group", "string"), ("role", "string"), ("frozen", "boolean")):
            ET.SubElement(root, "key", {"id": key, "for": "node", "attr.name": key, "attr.type": kind})
        graph = ET.SubElement(root, "graph", edgedefault="undirected")
        for group in self.groups:
            for slot in group.members:
                node = ET.SubElement(graph, "node", id=str(slot))
                for key, value in (("group", group.id), ("role", slot.role.value),
                                   ("frozen", str(group.frozen).lower())):
                    ET.SubElement(node, "data", key=key).text = value
        for a, b in dict.fromkeys((str(a), str(b)) for a, b in self.slot_edges):
            ET.SubElement(graph, "edge", source=a, target=b)
        write_atomically(path, lambda f: ET.ElementTree(root).write(f, encoding="utf-8", xml_declaration=True))


def connected_labels(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Connected components of the graph on nodes 0..n-1 with edges (u[k], v[k]).

    Returns a label per node, 0..k-1, numbered by first appearance. Vectorised label
    propagation with pointer jumping: each round hooks every edge to the smaller label,
    then compresses paths, so the number of rounds grows with log(n) on typical graphs.
    """
    labels = np.arange(n)
    if len(u):
        u = np.asarray(u, dtype=np.int64)
        v = np.asarray(v, dtype=np.int64)
        while True:
            lu, lv = labels[u], labels[v]
            if np.array_equal(lu, lv):
                break
            low = np.minimum(lu, lv)
            np.minimum.at(labels, lu, low)
            np.minimum.at(labels, lv, low)
            while True:  # pointer jumping: labels[i] <- labels[labels[i]] until stable
                nxt = labels[labels]
                if np.array_equal(nxt, labels):
                    break
                labels = nxt
    # every node now holds its component's smallest index (labels only ever decrease, and the
    # smallest index keeps its own): numbering those roots in order numbers components by first appearance
    roots = np.flatnonzero(labels == np.arange(n))
    lookup = np.empty(n, dtype=np.int64)
    lookup[roots] = np.arange(len(roots))
    return lookup[labels]


def iter_pairs(c: Coupling, size_a: int, size_b: int) -> tuple[np.ndarray, np.ndarray]:
    if c.a_index is None:
        if size_a != size_b:
            raise ValueError(f"identity coupling between {c.a} (size {size_a}) and {c.b} (size {size_b})")
        idx = np.arange(size_a)
        return idx, idx
    return np.asarray(c.a_index, dtype=np.int64), np.asarray(c.b_index, dtype=np.int64)


def _saves_nothing(free: np.ndarray, weight_maps: Iterable[np.ndarray]) -> bool:
    """True when pinning everything but the `free` channels leaves nothing worth removing: no channel free, or
    no layer's weight (its index map) writes or reads a free one."""
    return not free.any() or not any(free[m].any() for m in weight_maps)


def _freezes_of(comp: list[Slot], members: Mapping[Slot, np.ndarray], size: int,
                reasons: Mapping[Slot, list[str]]) -> tuple[tuple[str, ...], tuple[Pin, ...]]:
    """(whole-group reasons, pins) of one group. A frozen slot keeps its positions when the channels its
    index map reaches are kept: those channels are pinned, one Pin per reason. Every reason freezes the
    whole group instead when the pins cover every channel, when a frozen slot has no positions, or when
    no layer's weight writes or reads an unpinned channel: then only activations and buffers would
    shrink (a position-ids buffer sliced to the example's sequence length), which saves nothing and
    would bake that length into the model."""
    covered: dict[str, list[np.ndarray]] = {}
    empty = False
    for s in comp:
        for r in reasons.get(s, ()):
            covered.setdefault(r, []).append(members[s])
            empty |= not members[s].size
    if not covered:
        return (), ()
    channels = {r: np.unique(np.concatenate(maps)) for r, maps in covered.items()}
    free = np.ones(size, dtype=bool)
    free[np.concatenate(list(channels.values()))] = False
    weights = (members[s] for s in comp if s.role in (Role.PRODUCER, Role.CONSUMER))
    if empty or _saves_nothing(free, weights):
        return tuple(covered), ()
    return (), tuple(Pin(tuple(c.tolist()), r) for r, c in channels.items())


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _components(slots: list[Slot], a: np.ndarray, b: np.ndarray, order: Mapping[str, int]) -> list[list[int]]:
    """The connected components of the slot graph (slot indices; edges a[k]-b[k]), each sorted by graph order,
    then slot name and dim (stably), and ordered by their first slot."""
    found: dict[int, list[int]] = {}
    for i, label in enumerate(connected_labels(len(slots), a, b).tolist()):
        found.setdefault(label, []).append(i)
    rank = [(order.get(s.name, len(order)), s.name, s.dim) for s in slots]
    return sorted((sorted(c, key=rank.__getitem__) for c in found.values()), key=lambda c: rank[c[0]])


def _index_maps(pairs: Iterable[tuple[Coupling, int, int]], comp: list[int], slots: list[Slot],
                size_of: list[int]) -> tuple[dict[Slot, np.ndarray], int]:
    """(each slot's index map, the group's size) of a component (slot indices `comp`): the group channel of every
    position, connected_labels of the position graph the couplings `pairs` (coupling, slot index a, slot index b)
    draw. Equal maps are one read-only array (most members of a group map their positions alike), so
    ChannelGroup.per_index_map derives what it derives once per distinct map. When every coupling is the identity
    between slots of one size, position p of every slot is channel p."""
    pairs = list(pairs)
    sizes = {size_of[i] for i in comp}
    if len(sizes) == 1 and all(c.a_index is None for c, _, _ in pairs):
        size = sizes.pop()  # what connected_labels numbers
        return dict.fromkeys((slots[i] for i in comp), _read_only(np.arange(size, dtype=np.int64))), size
    base, offset = {}, 0
    for i in comp:
        base[i] = offset
        offset += size_of[i]
    us, vs = [], []
    for c, i, j in pairs:
        ia, ib = iter_pairs(c, size_of[i], size_of[j])
        us.append(ia + base[i])
        vs.append(ib + base[j])
    labels = connected_labels(offset, np.concatenate(us) if us else np.empty(0, np.int64),
                              np.concatenate(vs) if vs else np.empty(0, np.int64))
    distinct: dict[bytes, np.ndarray] = {}
    members = {slots[i]: distinct.setdefault((m := labels[base[i]: base[i] + size_of[i]]).tobytes(), _read_only(m))
               for i in comp}
    return members, int(labels.max()) + 1 if offset else 0


def build_groups(
    sizes: Mapping[Slot, int],
    couplings: Iterable[Coupling],
    freezes: Iterable[Freeze],
    order: Mapping[str, int],
    channel_dims: Mapping[str, object],
) -> DependencyGraph:
    """Group slots by connected component and number each group's channels.

    `order` ranks node names (graph order) so group ids and numbering are deterministic.
    Slots are handled by their index in one list (a Slot's hash is Python code, an int's is not).
    """
    couplings = list(couplings)
    reasons: dict[Slot, list[str]] = {}
    for f in freezes:
        reasons.setdefault(f.slot, []).append(f.reason)
    slots = list(dict.fromkeys([*sizes, *reasons, *(s for c in couplings for s in (c.a, c.b))]))
    index = {s: i for i, s in enumerate(slots)}
    a = np.fromiter((index[c.a] for c in couplings), np.int64, len(couplings))
    b = np.fromiter((index[c.b] for c in couplings), np.int64, len(couplings))
    components = _components(slots, a, b, order)
    comp_of = [0] * len(slots)
    for k, comp in enumerate(components):
        for i in comp:
            comp_of[i] = k
    by_component: dict[int, list[tuple[Coupling, int, int]]] = {}
    for c, i, j in zip(couplings, a.tolist(), b.tolist()):
        by_component.setdefault(comp_of[i], []).append((c, i, j))
    size_of = [sizes[s] for s in slots]

    groups = []
    for k, comp in enumerate(components):
        members, size = _index_maps(by_component.get(k, ()), comp, slots, size_of)
        comp_slots = list(members)
        frozen, pins = _freezes_of(comp_slots, members, size, reasons)
        anchor = next((s for s in comp_slots if not s.is_param), comp_slots[0])
        gid = f"{anchor.name}:{anchor.dim}"
        groups.append(ChannelGroup(gid, size, members, frozen, pins))
    return DependencyGraph(tuple(groups), tuple((c.a, c.b) for c in couplings), dict(channel_dims))
