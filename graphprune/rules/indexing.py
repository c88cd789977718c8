"""Indexing: x[...] (fx's operator.getitem), slices (aten.slice.Tensor, torch.narrow), selects (torch.select,
aten.select.int) and aten.index.Tensor(x, [i0, None, i2, ...]) (torch.export's gather by integer tensors), one family.

Basic indexing (ints, slices, None, Ellipsis) is data movement: channels are found by pushing labels (movement.py);
a slice of the channel dim with step 1 is re-cut to the kept channels in `shrink`, and a slice of one channel
(`x[:, i:i+1]`, the key head of a fused multi-query QKV) pins that channel alone. An int on the channel dim
(`x[:, i]`, `x.select(1, i)`) takes one channel and drops the dim: that channel is pinned alone too, and `shrink`
rewrites i to its position among the kept channels. A constant list or 1-D tensor of
positions on the channel dim, the only advanced index (`x[:, [8, 2]]`), selects channels: output position j is
channel picked[j], re-written to the kept channels' new positions.

Integer tensors as indices (advanced indexing): on every dim an index tensor indexes, y reads the positions its
values hold; the other dims are taken whole. When x's channel dim c is not one of them, the output position k that
c lands on satisfies y[..., k, ...] = x[..., c, ...] at positions chosen on the other dims by values that are not
channel positions: removing channel c of x removes channel k of y and changes no other element. Exact, and nothing
to rewrite. Where c lands is found by pushing labels with every index tensor replaced by zeros of its shape:
labels are constant along every dim but c, so which positions an index picks cannot change them. Otherwise:
- an index tensor on the channel dim (a gather of channels) freezes them, unless it is a constant 1-D index and the
  only one (IndexRule: a selection of channels, re-written to the kept ones);
- an index tensor's own channels (a buffer of positions, declared as a vector) are frozen: its values are positions,
  and removing some would change which elements are read;
- a boolean mask (data-dependent shape, and it may span several dims) freezes the channels it touches.
`gather(x, dim, index)` (y[..., k, ...] = x[..., index[..., k, ...], ...] along `dim`, every other dim read at the
output's own position) along a dim other than x's channel dim c is channel-wise when the index is the same at every
position of c: then y[c] = x[c] gathered by one index, so removing channel c of x removes channel c of y and changes
no other element (exact). That is proven from the graph, never assumed: the index is an `expand` or a `repeat` of a
tensor of size 1 on c (DeBERTa's relative positions, expanded over batch x heads; ViT-MAE's kept token ids, repeated
over the hidden size), read by the gather alone, whose size (or count) on c `GatherRule.shrink` rewrites to the kept
count (a symbolic batch x heads scaled, as view/reshape do). Any other
index freezes the channels.
A constant table with no declared channel dim (a parameter (entries, heads) gathered by a constant index: a relative
position bias) carries channels on its one whole dim of size > 1: they are coupled to that dim of the parameter,
so the table is sliced with whatever the output meets (the attention heads it is added to).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from ..groups import Coupling, Effect, Freeze, Role
from ..trace import META_KEY, TensorMeta
from .base import AnalysisContext, Rule, ShrinkContext, callable_of, describe_node, freeze_inputs
from .callsite import arg, cut_dim, grouped_together, holds_mask, kept_bounds, kept_count, kept_on_dim
from .movement import MovementRule, channel_cut, resize_argument


class IndexRule(MovementRule):
    """aten.index.Tensor(x, indices): indices[i] (a tensor or None) indexes dim i (module docstring). One constant
    1-D index on the channel dim d and none elsewhere selects channels (Falcon's fused QKV: `qkv[..., [-2], :]` is
    the key head): output position j is channel idx[j] of x, and `shrink` writes the kept channels' new positions
    as a new constant."""

    reads_values = True  # indices are tensors: which positions, and how many, are values

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, indices = node.args[:2]
        entries = list(indices) + [None] * (len(ctx.shape(x)) - len(indices))
        d = ctx.channel_dim(x)
        picked = _selected_channels(ctx, x, entries)
        if picked is None:
            return gather_effect(self, node, ctx, x, entries)
        return selection_effect(node, ctx, x, d, picked)

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        x, indices = node.args[:2]
        d = ctx.declared.get(x.name)
        if not isinstance(d, int) or ctx.kept(x.name, d) is None or d >= len(indices) or indices[d] is None:
            return
        picked = kept_selection(ctx, x, node, d, constant_index(indices[d], ctx).numpy() % ctx.value(x).shape[d])
        name = f"{node.name}_kept_index"
        ctx.gm.register_buffer(name, torch.as_tensor(picked, dtype=torch.int64))
        with ctx.gm.graph.inserting_before(node):
            constant = ctx.gm.graph.get_attr(name)
        constant.meta[META_KEY] = TensorMeta((len(picked),), torch.int64)
        node.args = (x, [constant if i == d else a for i, a in enumerate(indices)]) + tuple(node.args[2:])


def selection_effect(node: fx.Node, ctx: AnalysisContext, x: fx.Node, d: int, picked: np.ndarray) -> Effect:
    """A constant selection of channels: output position j on dim d is channel picked[j] of x (exact)."""
    coupling = Coupling(ctx.output_slot(node, d), ctx.input_slot(x, d), np.arange(len(picked)), picked)
    return Effect(d, couplings=(coupling,))


def kept_selection(ctx: ShrinkContext, x: fx.Node, node: fx.Node, d: int, picked: np.ndarray) -> np.ndarray:
    """The positions in pruned x of the picked channels that the pruned output keeps."""
    out_kept = ctx.kept(node.name, d)
    return np.searchsorted(ctx.kept(x.name, d), picked if out_kept is None else picked[out_kept])


def _selected_channels(ctx: AnalysisContext, x: fx.Node, entries: list) -> np.ndarray | None:
    """The channels of x a constant 1-D index on its channel dim picks, in output order, when that index is the only
    one; else None."""
    d = ctx.channel_dim(x)
    tensors = [i for i, e in enumerate(entries) if ctx.is_tensor(e)]
    if not isinstance(d, int) or tensors != [d] or len(ctx.shape(entries[d])) != 1:
        return None
    values = constant_index(entries[d], ctx)
    return None if values is None else values.numpy() % ctx.shape(x)[d]


def constant_index(index: fx.Node, view) -> torch.Tensor | None:
    """The values of an index tensor that is a constant (a get_attr, maybe through copies), else None."""
    while index.op == "call_function" and index.target in _COPIES:
        index = index.args[0]
    value = view.constant(index)
    return value.detach().cpu().long() if value is not None else None


_COPIES = (torch.ops.aten.clone.default, torch.ops.aten.alias.default, torch.ops.aten.lift_fresh_copy.default)


def gather_effect(rule: MovementRule, node: fx.Node, ctx: AnalysisContext, x: fx.Node, entries: list) -> Effect:
    """The effect of indexing `x` with `entries` (one per dim of x: an index tensor, None for a whole dim, or a basic
    index), at least one of them a tensor (module docstring)."""
    tensors = [e for e in entries if ctx.is_tensor(e)]
    described = describe_node(node, ctx.modules)
    if any(ctx.value(t).dtype == torch.bool for t in tensors):
        return Effect(None, freezes=freeze_inputs(node, ctx, f"{described} selects by a boolean mask"))
    freezes = tuple(Freeze(ctx.input_slot(t, ctx.channel_dim(t)), f"{described} reads `{t.name}` as positions: "
                           "removing some would change which elements are read")
                    for t in tensors if isinstance(ctx.channel_dim(t), int))
    by_value = frozenset(t.name for t in tensors)
    d = ctx.channel_dim(x)
    if isinstance(d, int) and entries[d] is not None:
        reason = f"{described} indexes the channel dim of `{x.name}` with {_describe(entries[d])}"
        return Effect(None, freezes=freeze_inputs(node, ctx, reason))
    effect = (table_effect(rule, node, ctx, x, entries, by_value) if d is None else None) \
        or rule.labelled(node, ctx, by_value=by_value)
    return Effect(effect.out_dim, couplings=effect.couplings, freezes=effect.freezes + freezes)


def table_effect(rule: MovementRule, node: fx.Node, ctx: AnalysisContext, x: fx.Node, entries: list,
                 by_value: frozenset[str] = frozenset()) -> Effect | None:
    """Indexing or slicing a constant table `x` with no declared channel dim along all its dims but one whole dim of
    size > 1 (entries: None for a whole dim): that dim carries the channels, coupled to the parameter's own slot, so
    the table is sliced with whatever the output meets (a relative position bias gathered by positions; ViT-MAE's
    position embeddings sliced past the class token). None for anything else."""
    table = _table_dim(ctx, x, entries)
    if table is None:
        return None
    role = Role.PRODUCER if x.target in ctx.params else Role.BUFFER

    def slot_of(a: fx.Node, dim: int):
        return ctx.param_slot(a.target, dim, role) if a is x else ctx.input_slot(a, dim)

    return rule.labelled(node, ctx, dims={x.name: table}, by_value=by_value, slot_of=slot_of)


def _table_dim(ctx: AnalysisContext, x: fx.Node, entries: list) -> int | None:
    """The channel dim of a constant table indexed along its other dims: its one whole dim of size > 1."""
    if ctx.constant(x) is None:
        return None
    whole = [i for i, e in enumerate(entries) if e is None and ctx.shape(x)[i] > 1]
    return whole[0] if len(whole) == 1 else None


def _describe(entry) -> str:
    return f"the tensor `{entry.name}`" if isinstance(entry, fx.Node) else repr(entry)


@dataclass(frozen=True)
class SliceCall:
    """One slice call site, whatever its spelling: x[start:stop:step] along `dim` (bounds as written: ints, None
    or graph nodes; `dim` non-negative)."""

    x: fx.Node
    dim: int
    start: object
    stop: object
    step: int

    def bounds(self, size: int) -> tuple[int, int] | None:
        """[start, stop) made concrete for a dim of `size`, None for bounds the graph computes."""
        if isinstance(self.start, fx.Node) or isinstance(self.stop, fx.Node):
            return None
        start, stop, _ = slice(self.start, self.stop).indices(size)
        return start, stop


class AtenSlice:
    """aten.slice.Tensor(x, dim=0, start=None, end=None, step=1)."""

    def read(self, node: fx.Node, view) -> SliceCall:
        return SliceCall(node.args[0], cut_dim(node, view, 1), arg(node, 2, "start"), arg(node, 3, "end"),
                         arg(node, 4, "step", 1))

    def write(self, node: fx.Node, call: SliceCall, start: int, stop: int) -> None:
        node.args = (call.x, call.dim, start, stop) + tuple(node.args[4:])
        node.kwargs = {k: v for k, v in node.kwargs.items() if k not in ("dim", "start", "end")}


class Narrow:
    """torch.narrow / Tensor.narrow(x, dim, start, length): the slice [start, start + length), a negative start
    counting from the end."""

    def read(self, node: fx.Node, view) -> SliceCall:
        x, dim, start, length = node.args[0], cut_dim(node, view, 1), arg(node, 2, "start"), arg(node, 3, "length")
        if not (isinstance(start, int) and isinstance(length, int)):
            return SliceCall(x, dim, start, length, 1)  # bounds the graph computes: `bounds` is None
        start += view.shape(x)[dim] if start < 0 else 0
        return SliceCall(x, dim, start, start + length, 1)

    def write(self, node: fx.Node, call: SliceCall, start: int, stop: int) -> None:
        node.args = (call.x, call.dim, start, stop - start)
        node.kwargs = {}


class SliceRule(MovementRule):
    """A slice of x along one dim, read through its spelling (`AtenSlice`, `Narrow`). Along another dim than the
    channel dim the channels are found by labels. On the channel dim, bounds the graph computes freeze the channels;
    with step 1 a cut of one channel pins it (`channel_cut`), and `shrink` re-cuts the bounds to the kept channels.

    Step k > 1 (GPT-OSS's interleaved gate/up columns, x[..., 0::2] and x[..., 1::2]) only over the whole dim
    (0 <= start < k, end >= n, k divides n): the n/k blocks [b*k, (b+1)*k) are tied whole, so a pruned x
    keeps whole blocks and the same (start, step) takes the same offset in every kept block (exact).
    """

    def __init__(self, spelling):
        self.spelling = spelling

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        call = self.spelling.read(node, ctx)
        d = ctx.channel_dim(call.x)
        if d is None and (table := table_effect(self, node, ctx, call.x, self._entries(call, ctx))) is not None:
            return table
        if not isinstance(d, int) or call.dim != d:
            return super().couple(node, ctx)
        n = ctx.shape(call.x)[d]
        if (bounds := call.bounds(n)) is None:
            reason = f"{describe_node(node)} cuts the channel dim at bounds the graph computes"
            return Effect(None, freezes=freeze_inputs(node, ctx, reason))
        start, stop = bounds
        if call.step == 1:
            return step_one_cut(self, node, ctx, call.x, d, start, stop)
        if not (0 <= start < call.step and stop >= n and n % call.step == 0):
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} takes every n-th channel "
                                                                 "of part of the channel dim"))
        effect = super().couple(node, ctx)
        blocks = grouped_together(ctx.input_slot(call.x, d), n, call.step)
        return Effect(effect.out_dim, couplings=effect.couplings + (blocks,), freezes=effect.freezes)

    @staticmethod
    def _entries(call: SliceCall, ctx: AnalysisContext) -> list:
        """One entry per dim of x, as indexing writes it: None for a whole dim, the slice on the cut dim."""
        shape = ctx.shape(call.x)
        whole = call.step == 1 and call.bounds(shape[call.dim]) == (0, shape[call.dim])
        cut = slice(call.start, call.stop, call.step)
        return [None if i != call.dim or whole else cut for i in range(len(shape))]

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        call = self.spelling.read(node, ctx)
        kept = kept_on_dim(ctx, call.x, call.dim)
        bounds = call.bounds(ctx.value(call.x).shape[call.dim])
        if kept is None or call.step != 1 or bounds is None:  # a whole-dim step slice keeps its bounds (couple)
            return
        self.spelling.write(node, call, *kept_bounds(kept, *bounds))


def step_one_cut(rule: MovementRule, node: fx.Node, ctx: AnalysisContext, x: fx.Node, d: int, start: int,
                 stop: int) -> Effect:
    """The slice [start, stop) of x's channel dim d, step 1, output dim d: a cut of one channel pins it
    (`channel_cut`); any other is labelled."""
    if stop - start == 1:
        return channel_cut(node, ctx, ctx.input_slot(x, d), d, start, stop, node)
    return rule.labelled(node, ctx)


def channel_pick(node: fx.Node, ctx: AnalysisContext, x: fx.Node, d: int, i: int) -> Effect:
    """`node` takes channel i (non-negative) of x's channel dim d and drops the dim (`x[:, i]`, `x.select(d, i)`): its
    output has no channel dim to follow, so channel i is pinned alone (the rest of its group stays prunable) and the
    op's `shrink` rewrites i to that channel's new position (`picked_position`): a one-channel `channel_cut` whose
    part is a slot of its own."""
    return channel_cut(node, ctx, ctx.input_slot(x, d), d, i, i + 1, node, slot=ctx.picked_slot(node, d))


def picked_position(ctx: ShrinkContext, x: fx.Node, d: int, i: int) -> int | None:
    """The position in pruned x of channel i of its channel dim d (pinned by `channel_pick`); None when x's channels
    are not pruned."""
    kept = kept_on_dim(ctx, x, d)
    return None if kept is None else int(np.searchsorted(kept, i % ctx.value(x).shape[d]))


class SelectRule(MovementRule):
    """select(x, dim, index) (torch.select, Tensor.select; aten.select.int, which is `x[:, i]` under torch.export).
    Along another dim than the channel dim the channels are found by labels; on the channel dim the one channel it
    takes is pinned (`channel_pick`), and `shrink` rewrites the index to its new position."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, dim, index = _select_arguments(node, ctx)
        d = ctx.channel_dim(x)
        if not isinstance(d, int) or dim != d:
            return super().couple(node, ctx)
        if not isinstance(index, int):
            reason = f"{describe_node(node, ctx.modules)} takes a channel at a position the graph computes"
            return Effect(None, freezes=freeze_inputs(node, ctx, reason))
        return channel_pick(node, ctx, x, d, index % ctx.shape(x)[d])

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        x, dim, index = _select_arguments(node, ctx)
        new = picked_position(ctx, x, dim, index) if isinstance(index, int) else None
        if new is not None:
            node.args = (x, dim, new)
            node.kwargs = {}


def _select_arguments(node: fx.Node, view) -> tuple:
    """(x, dim made non-negative, index) of a select, in any spelling."""
    return node.args[0], cut_dim(node, view, 1), arg(node, 2, "index")


class GetItemRule(MovementRule):
    """x[...]: tuple parts pass through; tensor slices with step 1 on the channel dim are re-cut; an int on it takes
    one channel (`channel_pick`); integer tensors as indices are a gather (module docstring)."""

    def reads_values_in(self, args: tuple, kwargs: dict) -> bool:
        """x[mask] keeps as many positions as the mask's values say; x[idx] with integer tensors takes idx's shape
        (its values say which positions, not how many), as ints, slices and tuple parts do."""
        return holds_mask(args[1:])

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        src, index = node.args
        if not ctx.is_tensor(src):  # a part of a split/chunk/tuple: its producer rule did the coupling
            dims = ctx.channel_dim(src)
            return Effect(dims[index] if isinstance(dims, tuple) and isinstance(index, int) else None)
        rank = len(ctx.shape(src))
        entries = [None if e == slice(None) else e for e in _expand_index(index, rank)]
        if any(ctx.is_tensor(e) for e in entries):
            return gather_effect(self, node, ctx, src, entries)
        d = ctx.channel_dim(src)
        if d is None and (table := table_effect(self, node, ctx, src, entries)) is not None:
            return table
        entry = entries[d] if isinstance(d, int) else None
        if _is_int(entry):
            return channel_pick(node, ctx, src, d, entry % ctx.shape(src)[d])
        if (picked := _listed_channels(index, entries, d, ctx.shape(src))) is not None:
            return selection_effect(node, ctx, src, d, picked)
        if not (entry is None or _plain_slice(entry)):
            reason = f"{describe_node(node)} indexes the channel dim with {entry!r}"
            return Effect(None, freezes=freeze_inputs(node, ctx, reason))
        if entry is not None and _keeps_dim_in_place(index, entries, d):
            return step_one_cut(self, node, ctx, src, d, *entry.indices(ctx.shape(src)[d])[:2])
        return super().couple(node, ctx)

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        src, index = node.args
        d = ctx.declared.get(src.name)
        if not isinstance(ctx.value(src), TensorMeta) or not isinstance(d, int):
            return
        kept = ctx.kept(src.name, d)
        if kept is None:
            return
        shape = ctx.value(src).shape
        entries = _expand_index(index, len(shape))
        if (picked := _listed_channels(index, entries, d, shape)) is not None:
            new = [int(i) for i in kept_selection(ctx, src, node, d, picked)]
        elif _is_int(entries[d]):
            new = picked_position(ctx, src, d, entries[d])
        elif isinstance(entries[d], slice) and entries[d] != slice(None):
            start, stop, _ = entries[d].indices(shape[d])
            new = slice(*kept_bounds(kept, start, stop), None)
        else:
            return
        node.args = (src, _replace_index_entry(index, d, len(shape), new))


def _plain_slice(entry) -> bool:
    """A slice with step 1 and constant bounds."""
    return isinstance(entry, slice) and entry.step in (None, 1) and not isinstance(entry.start, fx.Node) \
        and not isinstance(entry.stop, fx.Node)


def _keeps_dim_in_place(index, entries: list, d: int) -> bool:
    """Whether input dim d is output dim d (`entries`: the index, one entry per input dim): the index adds no axis
    and takes no dim before d by an integer."""
    items = list(index) if isinstance(index, tuple) else [index]
    return not any(i is None for i in items) and not any(isinstance(e, int) for e in entries[:d])


def _listed_channels(index, entries: list, d, shape) -> np.ndarray | None:
    """The channels a list of ints on the channel dim d picks (`x[:, [8, 2]]`), in output order, when every other
    entry is a slice and the index adds no axis (output dim d is then the list's); else None."""
    if not isinstance(d, int) or not _is_int_list(entries[d]) or not _keeps_dim_in_place(index, entries, d):
        return None
    if not all(isinstance(e, slice) or e is None for i, e in enumerate(entries) if i != d):
        return None
    return np.asarray(entries[d], dtype=np.int64) % shape[d]


def _is_int(entry) -> bool:
    return isinstance(entry, int) and not isinstance(entry, bool)


def _is_int_list(entry) -> bool:
    return isinstance(entry, list) and bool(entry) and all(_is_int(i) for i in entry)


def _expand_index(index, rank: int) -> list:
    """The index as one entry per input dim (None entries for new axes are dropped, Ellipsis expanded)."""
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    out = []
    for i in items:
        if i is Ellipsis:
            out += [slice(None)] * (rank - consumed)
        elif i is not None:
            out.append(i)
    return out + [slice(None)] * (rank - len(out))


def _replace_index_entry(index, d: int, rank: int, new):
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    dim = 0
    for pos, i in enumerate(items):
        if i is None:
            continue
        if i is Ellipsis:
            span = rank - consumed
            if dim <= d < dim + span:
                items = items[:pos] + [slice(None)] * (d - dim) + [new] + [slice(None)] * (dim + span - d - 1) + items[pos + 1:]
                return tuple(items) if isinstance(index, tuple) or len(items) > 1 else items[0]
            dim += span
            continue
        if dim == d:
            items[pos] = new
            return tuple(items) if isinstance(index, tuple) else items[0]
        dim += 1
    items += [slice(None)] * (d - dim) + [new]
    return tuple(items)


class GatherRule(Rule):
    """gather(x, dim, index) (torch.gather, Tensor.gather, aten.gather): channel-wise along a dim other than the
    channel dim when the index is an expand or repeat of one index over every channel (module docstring)."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, dim, index = _gather_arguments(node)
        described = describe_node(node, ctx.modules)
        if isinstance(ctx.channel_dim(index), int):
            reason = f"{described} reads `{index.name}` as positions: removing some would change which elements are read"
            return Effect(None, freezes=freeze_inputs(node, ctx, reason))
        d = ctx.channel_dim(x)
        if not isinstance(d, int):
            return Effect(None)
        problem = _varying_index(node, ctx, x, dim % len(ctx.shape(x)), index)
        if problem is not None:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{described} {problem}"))
        return Effect(d, couplings=(Coupling(ctx.input_slot(x, d), ctx.output_slot(node, d)),))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        x, _, index = _gather_arguments(node)
        d = ctx.declared.get(x.name)
        count = kept_count(ctx, x, d) if isinstance(d, int) else None
        if count is not None:
            resize_argument(index, d, count)


def _gather_arguments(node: fx.Node) -> tuple:
    """(x, dim, index) of a gather, in any spelling."""
    return arg(node, 0, "input"), arg(node, 1, "dim"), arg(node, 2, "index")


_REPEATS_OVER_CHANNELS = (torch.ops.aten.expand.default, torch.Tensor.expand, torch.ops.aten.repeat.default,
                          torch.Tensor.repeat)
"""Ops whose size argument on a dim where their input has size 1 is that dim's output size (expand: the size; repeat:
the count, times 1)."""


def _varying_index(node: fx.Node, ctx: AnalysisContext, x: fx.Node, dim: int, index: fx.Node) -> str | None:
    """Why the gather's index may differ between x's channels (its channel dim d), or None when it provably cannot:
    it gathers along another dim, with an index as long as x on d that expands or repeats a tensor of size 1 on d (or
    without d) and that nothing else reads (its size on d follows the kept channels)."""
    d = ctx.channel_dim(x)
    if dim == d:
        return f"gathers along the channel dim of `{x.name}`"
    if ctx.shape(index)[d] != ctx.shape(x)[d]:
        return f"reads part of the channel dim of `{x.name}` (index `{index.name}` is shorter on it)"
    if callable_of(index) not in _REPEATS_OVER_CHANNELS or not ctx.is_tensor(index.args[0]):
        return f"gathers by `{index.name}`, which is neither an expand nor a repeat: it may differ between channels"
    source = ctx.shape(index.args[0])
    aligned = d - (len(ctx.shape(index)) - len(source))
    if aligned >= 0 and source[aligned] != 1:
        return f"gathers by `{index.name}`, which repeats a tensor that varies along the channel dim"
    if len(index.users) != 1:
        return f"gathers by `{index.name}`, which other ops read too: its size on the channel dim cannot follow"
    return None


def indexing_rules() -> dict:
    """Every spelling of indexing and gathering -> its family's rule."""
    gather, narrow, select = GatherRule(), SliceRule(Narrow()), SelectRule()
    return {operator.getitem: GetItemRule(), torch.ops.aten.index.Tensor: IndexRule(),
            torch.ops.aten.slice.Tensor: SliceRule(AtenSlice()), torch.narrow: narrow, torch.Tensor.narrow: narrow,
            torch.select: select, torch.Tensor.select: select, torch.ops.aten.select.int: select,
            torch.gather: gather, torch.Tensor.gather: gather, torch.ops.aten.gather.default: gather}
