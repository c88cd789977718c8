"""Pure data movement, handled by one idea: push channel labels through the op.

Each input tensor with a known channel dim is replaced by an integer tensor of the same
shape whose value at every element is a label for its channel (labels of different
inputs do not overlap). Running the op on the labels shows where every channel lands:
cat, split, chunk, slicing, view/reshape/flatten, permute/transpose, channel shuffle and
pixel shuffle all come out of the same code.

Reading the output: its channel dim is a dim along which labels vary. When several vary
(a split of the channel dim into (g, C/g) or (heads, head_dim)), we pick the dim that
keeps the most independent channels after merging every label that lands at the same
position; merging is always safe, it only prunes coarser. On the way into attention the
head_dim is never picked, so heads are pruned whole. Position j of the chosen dim
is tied to every label found at j, which gives the couplings.
"""
from __future__ import annotations

import math
import operator
from dataclasses import replace
from typing import Callable, Mapping

import numpy as np
import torch
import torch.fx as fx

from ..codesizes import SPLIT_KEY, SplitSizes
from ..errors import RewriteError
from ..groups import Coupling, Effect, EqualParts, Freeze, Slot, connected_labels
from ..trace import META_KEY, TensorMeta, code_location, value_meta
from .base import AnalysisContext, Rule, ShrinkContext, callable_of, describe_node, freeze_inputs, queried_dims
from .callsite import arg, cut_dim, given, kept_count, kept_on_dim, part_users, whole_use_freezes


LABELS = torch.int32  # the dtype of label tensors: half the memory traffic of int64 on large activations (a
# UNet's concatenations at 128x128); channel labels number far fewer than 2**31


def run_on_labels(node: fx.Node, ctx: AnalysisContext, dims: Mapping[str, int] | None = None,
                  by_value: frozenset[str] = frozenset()):
    """Run the node's op on label tensors. Returns (output, [(input node, dim, first label)]).

    `dims`: channel dims to label instead of the declared ones (by node name); `by_value`: the names of tensors
    the op reads as positions (indices), given as zeros of their shape: never labelled, always valid positions.
    """
    sources = []
    next_label = 0

    def to_label(a: fx.Node):
        nonlocal next_label
        v = ctx.value(a)
        if not isinstance(v, TensorMeta):
            return v
        if a.name in by_value:
            return torch.zeros(v.shape, dtype=torch.int64)
        d = (dims or {}).get(a.name, ctx.channel_dim(a))
        if not isinstance(d, int):
            return torch.full(v.shape, -1, dtype=LABELS)
        n = v.shape[d]
        view = [n if i == d else 1 for i in range(len(v.shape))]
        labels = torch.arange(next_label, next_label + n, dtype=LABELS).view(view).expand(v.shape).contiguous()
        sources.append((a, d, next_label))
        next_label += n
        return labels

    args = fx.node.map_arg(node.args, to_label)
    kwargs = fx.node.map_arg(node.kwargs, to_label)
    if node.op == "call_module":
        out = ctx.module(node)(*args, **kwargs)
    else:
        out = callable_of(node)(*args, **kwargs)
    return out, sources


def _atoms_along(t: np.ndarray, k: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Positions along dim k paired with the labels found there; and how many channels survive merging."""
    n = t.shape[k]
    moved = np.moveaxis(t, k, -1).reshape(-1, n)
    pos = np.broadcast_to(np.arange(n), moved.shape).ravel()
    lab = moved.ravel().astype(np.int64)  # lab * n below may not fit the labels' dtype
    key = np.unique(lab * n + pos)
    lab, pos = key // n, key % n
    uniq, lab_idx = np.unique(lab, return_inverse=True)
    comps = connected_labels(n + len(uniq), pos, n + lab_idx)
    return int(comps.max()) + 1, pos, lab


def read_channel_dim(t: torch.Tensor, inside: frozenset[int] = frozenset(), batch_sized: frozenset[int] = frozenset()):
    """(dim, positions, labels) of a labelled output, or a string saying why there is none.

    `inside`: the dims that are no heads dim of the attention the output leads to (head_dim, the two dims of an
    interleaved rotary's stack, the positions: see `dependencies.attention_inputs`); they are never the channel
    dim when another dim varies. `batch_sized`: dims whose size the model computes from sizes that are not
    channel counts (`b * windows * heads` split back into `(b * windows, heads)`): another varying dim is
    preferred to them. Ties go to the inner dim.
    """
    a = t.numpy()
    if not a.size or a.max() < 0:
        return None
    if a.min() < 0:
        return "mixes channels with a tensor whose channels graphprune cannot follow"
    # torch.equal stops at the first difference and compares with the broadcast first slice in place
    varying = [k for k in range(a.ndim) if a.shape[k] > 1 and not torch.equal(t, t.narrow(k, 0, 1).expand_as(t))]
    if not varying:
        return ("holds a single channel of its input (one position, as the one key/value head that multi-query "
                "attention shares with every query head): the channels it reads stay")
    if len(varying) == 1:
        k = varying[0]
        labels = np.moveaxis(a, k, 0).reshape(a.shape[k], -1)[:, 0].astype(np.int64)
        return k, np.arange(a.shape[k]), labels
    best = None
    candidates = [k for k in varying if k not in inside] or varying
    for k in [k for k in candidates if k not in batch_sized] or candidates:
        atoms, pos, lab = _atoms_along(a, k)
        if best is None or atoms >= best[0]:
            best = (atoms, k, pos, lab)
    return best[1], best[2], best[3]


def landing_dims(node: fx.Node, source: fx.Node) -> list[set[int]] | None:
    """For each dim j of `source`, the dims of `node`'s output (of every tensor part) along which j's position varies.

    Found by running the op on `source`'s element positions (1 + flat index) and zeros for every other tensor (zeros
    are valid positions where the op reads indices): each output element > 0 is the source element it holds. None
    when the op cannot run on them (`source` read as indices)."""
    src = value_meta(source)
    if math.prod(src.shape) <= 1:  # a scalar or an empty tensor: no dim to follow
        return [set() for _ in src.shape]

    def fill(a):
        v = value_meta(a)
        if not isinstance(v, TensorMeta):
            return v
        if a is source:
            return torch.arange(1, math.prod(v.shape) + 1, dtype=torch.int64).view(v.shape)
        return torch.zeros(v.shape, dtype=torch.int64)

    fn = node.graph.owning_module.get_submodule(node.target) if node.op == "call_module" else callable_of(node)
    try:
        out = fn(*fx.node.map_arg(node.args, fill), **fx.node.map_arg(node.kwargs, fill))
    except (RuntimeError, IndexError, TypeError, ValueError):
        return None
    landed = [set() for _ in src.shape]
    for part in (out if isinstance(out, (tuple, list)) else [out]):
        if not isinstance(part, torch.Tensor) or part.dtype != torch.int64 or part.numel() == 0:
            continue
        held = part.numpy()
        present = held > 0
        for j, coord in enumerate(np.unravel_index(np.maximum(held, 1) - 1, src.shape)):
            if src.shape[j] > 1:
                landed[j] |= {k for k in range(held.ndim) if _varies_along(coord, present, k)}
    return landed


def _varies_along(coord: np.ndarray, present: np.ndarray, k: int) -> bool:
    """Two neighbours along dim k that both hold a source element differ in `coord` (data movement keeps a source's
    elements next to each other along every dim: a slice, a part of a concatenation)."""
    before = tuple(slice(None, -1) if i == k else slice(None) for i in range(coord.ndim))
    after = tuple(slice(1, None) if i == k else slice(None) for i in range(coord.ndim))
    return bool(((coord[before] != coord[after]) & present[before] & present[after]).any())


def channel_cut(part: fx.Node, ctx: AnalysisContext, source: Slot, dim: int, lo: int, hi: int,
                op: fx.Node, which: str = "", slot: Slot | None = None) -> Effect:
    """`part` holds the channels lo..hi-1 of `source` on `dim`, in order: a part of the split `op` (`which` says
    which part), or the slice or select `op` of the channel dim. A cut of one channel has no channel dim to follow:
    that channel is pinned alone (the rest of its group stays prunable), and the op's `shrink` re-cuts its bounds (or
    rewrites its index) so that it still holds it. `slot` stands for the part (default: its output dim `dim`; a
    select, whose output drops the dim, passes `AnalysisContext.picked_slot`)."""
    slot = ctx.output_slot(part, dim) if slot is None else slot
    coupling = Coupling(slot, source, np.arange(hi - lo), np.arange(lo, hi))
    if hi - lo != 1:
        return Effect(dim, couplings=(coupling,))
    reason = (f"{describe_node(op, ctx.modules)} holds a single channel of its input{which} (as the one key/value head "
              "that multi-query attention shares with every query head, `x[:, i:i+1]` or `x[:, i]`): that channel stays")
    return Effect(None, couplings=(coupling,), freezes=(Freeze(slot, reason),))


class MovementRule(Rule):
    """Data movement with no shape constants to rewrite (cat, permute, transpose, flatten, ...)."""

    reads_values = False
    carries_heads = True  # a (heads, head_dim) split on the way into attention keeps the heads (see analysis)

    def head_dims_of_input(self, node: fx.Node, source: fx.Node, dims: frozenset[int]) -> frozenset[int]:
        """The dims of `source` whose positions land in `dims` of the output alone (`landing_dims`): a permute moves
        them, a reshape that splits channels into (heads, head_dim) leaves the channels' dim out (its positions
        also land on the heads), a slice or concatenation along head_dim keeps it. A part of a tuple (getitem of a
        split) keeps its dims; an op that cannot run on positions marks none."""
        if not isinstance(value_meta(source), TensorMeta):
            return dims
        landed = landing_dims(node, source)
        return frozenset(j for j, out in enumerate(landed or ()) if out and out <= dims)

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        return self.labelled(node, ctx)

    def labelled(self, node: fx.Node, ctx: AnalysisContext, dims: Mapping[str, int] | None = None,
                 by_value: frozenset[str] = frozenset(), slot_of: Callable[[fx.Node, int], Slot] | None = None,
                 batch_sized: frozenset[int] = frozenset()) -> Effect:
        """The effect read from the labels' landing places (`run_on_labels` for `dims`, `by_value`; `read_channel_dim`
        for `batch_sized`); `slot_of(input, dim)` gives an input's slot (default: `ctx.input_slot`; a parameter's own
        slot for a constant table)."""
        out, sources = run_on_labels(node, ctx, dims, by_value)
        if not sources:
            return Effect(None)
        bases = np.array([b for _, _, b in sources])
        in_slots = [(slot_of or ctx.input_slot)(a, d) for a, d, _ in sources]
        tuple_out = isinstance(out, (tuple, list))
        outs = list(out) if tuple_out else [out]
        dims, couplings, freezes = [], [], []
        for i, t in enumerate(outs):
            inside = ctx.head_splits.get(node.name, frozenset())
            read = read_channel_dim(t, inside, batch_sized) if isinstance(t, torch.Tensor) else None
            if not isinstance(read, tuple):
                dims.append(None)
                if isinstance(read, str):
                    reason = f"{describe_node(node, ctx.modules)} {read}"
                    freezes += [Freeze(s, reason) for s in in_slots]
                continue
            k, pos, lab = read
            dims.append(k)
            owners = [node] if not tuple_out else part_users(node, i)
            src = np.searchsorted(bases, lab, side="right") - 1
            for owner in owners:
                out_slot = ctx.output_slot(owner, k)
                for j, in_slot in enumerate(in_slots):
                    mask = src == j
                    if mask.any():
                        couplings.append(Coupling(out_slot, in_slot, pos[mask], lab[mask] - bases[j]))
        if tuple_out:
            freezes += whole_use_freezes(node, in_slots)
        out_dim = tuple(dims) if tuple_out else dims[0]
        return Effect(out_dim, couplings=tuple(couplings), freezes=tuple(freezes))


ATEN_RESHAPES = (torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default, torch.ops.aten.reshape.default)


class ReshapeRule(MovementRule):
    """view/reshape/expand: sizes in the shape argument follow the pruned channel counts.

    The channel dim's size becomes the kept count, whatever computed it (`c` in
    `reshape(n, l, c)` after `n, l, c = x.shape` is the input's width, not the heads kept).
    Another dim's size computed from a pruned channel count (`c // heads` as head_dim) keeps
    its old value; sizes computed from anything else (the batch) stay dynamic. A channel dim
    merged with the batch (`view(b * heads, l, d)`, b symbolic) keeps its batch factor:
    `b * heads` becomes `b * kept` (see `_scaled`), never a constant.
    """

    rewrites_size_arguments = True

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        """A dim sized from sizes that are no channel counts (the symbolic batch: `x.size(0) // windows`) is the
        channel dim only when no other dim can be (`read_channel_dim`). An expand that broadcasts a tensor without
        channels along its users' channel dim (`broadcast_dim`) has that dim, coupled by its users."""
        broadcast = broadcast_dim(node, ctx)
        if broadcast is not None:
            ctx.output_slot(node, broadcast)
            return Effect(broadcast)
        batch_sized = frozenset(i for i, size in enumerate(_size_arguments(node)) if isinstance(size, fx.Node)
                                and (read := queried_dims(size)) and all(ctx.declared.get(t) != d for t, d in read))
        return self.labelled(node, ctx, batch_sized=batch_sized)

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        d = ctx.declared.get(node.name)
        old_shape = ctx.value(node).shape
        new_shape = list(old_shape)
        if isinstance(d, int):
            new_shape[d] = kept_count(ctx, node, d) or old_shape[d]
        shape = _size_arguments(node)
        for i, size in enumerate(shape):
            from_channels = isinstance(size, fx.Node) and any(ctx.kept(t, dim) is not None for t, dim in queried_dims(size))
            if from_channels:
                shape[i] = new_shape[i]
            elif i == d and size != -1 and new_shape[i] != old_shape[i]:
                shape[i] = _scaled(node, size, old_shape[i], new_shape[i]) if isinstance(size, fx.Node) else new_shape[i]
        _write_size_arguments(node, shape)


class RepeatInterleaveRule(MovementRule):
    """x.repeat_interleave(r, dim): each position along dim repeated r times (the whole tensor flattened first without
    dim), followed on labels for an int r, a count computed from sizes included (torch.export spells it unsqueeze,
    expand and view). A tensor of counts (positions repeated unevenly) or an `output_size` is not followed: the
    channels it reads stay."""

    def reads_values_in(self, args: tuple, kwargs: dict) -> bool:
        """A tensor of counts sets the output's size; an int does not."""
        return not isinstance(given(args, kwargs, 1, "repeats"), int)

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        repeats = arg(node, 1, "repeats")
        if repeats is None or ctx.is_tensor(repeats) or arg(node, 3, "output_size") is not None:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} repeats by a tensor of counts "
                                                                 "or to an output_size"))
        return self.labelled(node, ctx)


_EXPANDS = (torch.ops.aten.expand.default, torch.Tensor.expand)


def grown_dims(before: tuple[int, ...], after: tuple[int, ...]) -> list[int]:
    """The dims an expand grows from size 1 (`before`: its input's shape, `after`: its output's); none when the
    ranks differ."""
    if len(before) != len(after):
        return []
    return [i for i, (b, a) in enumerate(zip(before, after)) if b == 1 and a > 1]


def broadcast_dim(node: fx.Node, ctx: AnalysisContext) -> int | None:
    """The dim g along which an expand copies a tensor that carries no channels (size 1 on g, the one dim it grows),
    when every user also reads a tensor of the expand's shape whose channels lie on g (F.normalize's statistic
    expanded for `x / norm` under torch.export). The copies are equal, so any of them may go: the expand's size on g
    follows those channels (`shrink`), and its users couple them."""
    x = node.args[0] if node.args else None
    if callable_of(node) not in _EXPANDS or not (ctx.is_tensor(x) and ctx.is_tensor(node)) or isinstance(
            ctx.channel_dim(x), int):
        return None
    shape = ctx.shape(node)
    grown = grown_dims(ctx.shape(x), shape)
    if len(grown) != 1:
        return None

    def combines(user: fx.Node) -> bool:
        return any(other is not node and ctx.is_tensor(other) and ctx.shape(other) == shape
                   and ctx.channel_dim(other) == grown[0] for other in user.all_input_nodes)

    return grown[0] if node.users and all(combines(user) for user in node.users) else None


def resize_argument(node: fx.Node, i: int, new: int) -> None:
    """Size argument `i` of a view/reshape/expand `node` made `new` where its output had `old` positions on the
    example: an int is replaced, a symbolic size (batch x heads) scaled by `_scaled`."""
    shape = _size_arguments(node)
    old = value_meta(node).shape[i]
    shape[i] = _scaled(node, shape[i], old, new) if isinstance(shape[i], fx.Node) else new
    _write_size_arguments(node, shape)


def _write_size_arguments(node: fx.Node, shape: list) -> None:
    if _packed(node):
        node.args = (node.args[0], tuple(shape)) + tuple(node.args[2:])
    else:
        node.args = (node.args[0], *shape)


def _packed(node: fx.Node) -> bool:
    """The sizes are one list argument (`view(x, [b, n, c])`, `x.view((b, n, c))`), not one argument each."""
    return node.op == "call_function" or (len(node.args) == 2 and isinstance(node.args[1], (tuple, list)))


def _size_arguments(node: fx.Node) -> list:
    if len(node.args) < 2:
        return list(node.kwargs.get("shape", node.kwargs.get("size", ())))
    return list(node.args[1]) if _packed(node) else list(node.args[1:])


_SIZE_PRODUCT = (operator.mul, torch.ops.aten.sym_size.int, operator.getitem)


def _is_size_product(arg, depth: int = 8) -> bool:
    """`arg` is an int, a size query (x.size(0), x.shape[0], aten.sym_size) or a product of those."""
    if not isinstance(arg, fx.Node):
        return isinstance(arg, int)
    if arg.op == "call_method" and arg.target == "size":
        return True
    if depth == 0 or arg.op != "call_function" or arg.target not in _SIZE_PRODUCT:
        return False
    if arg.target is operator.mul:
        return all(_is_size_product(a, depth - 1) for a in arg.args)
    return bool(queried_dims(arg, depth=1))


def _scaled(node: fx.Node, arg: fx.Node, old: int, new: int) -> fx.Node:
    """A node computing `arg * new / old` before `node`: a symbolic size (batch x channels, `old` on the
    example) with its channel count cut to `new`. Exact at every batch size when `arg` is a product of
    sizes (`b * heads`); any other expression raises RewriteError, so its group is frozen, not guessed."""
    if not _is_size_product(arg):
        raise RewriteError(f"`{node.name}` ({node.target}) takes the symbolic size `{arg.name}` on its channel dim, "
                           "which is not a product of sizes; graphprune cannot cut channels out of it")
    graph = node.graph
    factor = arg.args[1] if arg.target is operator.mul and isinstance(arg.args[1], int) else None
    if factor is not None and factor * new == old and isinstance(arg.args[0], fx.Node):  # b * heads -> b
        return arg.args[0]
    with graph.inserting_before(node):
        if factor is not None and (factor * new) % old == 0:  # b * heads -> b * kept
            scaled = graph.call_function(operator.mul, (arg.args[0], factor * new // old))
        else:
            scaled = graph.call_function(operator.floordiv, (graph.call_function(operator.mul, (arg, new)), old))
            scaled.args[0].meta[META_KEY] = value_meta(arg) * new
    scaled.meta[META_KEY] = value_meta(arg) * new // old
    return scaled


class SqueezeRule(MovementRule):
    """squeeze(dim): a bare squeeze() would drop the channel dim if one channel were kept, so it is frozen."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        if len(node.args) < 2 and "dim" not in node.kwargs:
            reason = f"{describe_node(node)} squeezes every size-1 dim; pass the dim explicitly"
            return Effect(None, freezes=freeze_inputs(node, ctx, reason))
        return super().couple(node, ctx)


def as_torch_split(node: fx.Node, x: fx.Node, sizes: list[int], dim: int) -> None:
    node.op, node.target = "call_function", torch.split
    node.args, node.kwargs = (x, sizes), {"dim": dim}


def as_aten_split(node: fx.Node, x: fx.Node, sizes: list[int], dim: int) -> None:
    node.target, node.args, node.kwargs = torch.ops.aten.split_with_sizes.default, (x, sizes, dim), {}


class SplitRule(MovementRule):
    """split/chunk (torch.split, Tensor.chunk...; aten.split.Tensor, split_with_sizes), all (x, size(s), dim):
    after pruning, the parts are re-cut to their kept channel counts by a split with sizes, written by
    `respell` in the frontend's spelling (`as_torch_split`, `as_aten_split`)."""

    rewrites_size_arguments = True

    def __init__(self, respell=as_torch_split):
        self.respell = respell

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        """A cut along another dim than the channel dim: MovementRule's coupling (the channels ride through every
        part). A cut of the channel dim: `cut_channels`, and, for equal parts (`chunk(n)`, `split(c)`,
        `split([c, c])`), an EqualParts: the caller's code computes those sizes from the width or from one
        attribute, so the parts must keep equal counts for it to run pruned (the graph's own split takes any)."""
        x, dim = node.args[0], cut_dim(node, ctx, 2)
        if ctx.channel_dim(x) != dim:
            return super().couple(node, ctx)
        sizes, source = [part.shape[dim] for part in ctx.value(node)], ctx.input_slot(x, dim)
        effect = self.cut_channels(node, ctx, source, dim, sizes)
        if len(sizes) < 2 or len(set(sizes)) != 1:
            return effect
        parts = tuple(np.arange(k * sizes[0], (k + 1) * sizes[0]) for k in range(len(sizes)))
        where = f"{describe_node(node)} at {code_location(node)}"
        return replace(effect, equal_parts=(EqualParts(source, parts, where),))

    @staticmethod
    def cut_channels(node: fx.Node, ctx: AnalysisContext, source: Slot, dim: int, sizes: list[int]) -> Effect:
        """Part i holds the source channels bounds[i]..bounds[i+1] (the running sums of `sizes`) on `dim`, in order
        (`channel_cut`); a part of one channel is the key head of a fused multi-query QKV, `split([heads, 1, 1])`."""
        bounds = np.cumsum([0, *sizes])
        dims, couplings, freezes = [], [], []
        for i, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist())):
            dims.append(dim if hi - lo > 1 else None)
            for part in part_users(node, i) if hi > lo else ():
                cut = channel_cut(part, ctx, source, dim, lo, hi, node, f" in part {i}")
                couplings += cut.couplings
                freezes += cut.freezes
        freezes += whole_use_freezes(node, [source])
        return Effect(tuple(dims), couplings=tuple(couplings), freezes=tuple(freezes))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        x, dim = node.args[0], cut_dim(node, ctx, 2)
        kept = kept_on_dim(ctx, x, dim)
        if kept is None:
            return
        bounds = np.cumsum([0] + [part.shape[dim] for part in ctx.value(node)])
        sizes = [int(np.count_nonzero((kept >= lo) & (kept < hi))) for lo, hi in zip(bounds[:-1], bounds[1:])]
        node.meta[SPLIT_KEY] = SplitSizes(tuple(int(b - a) for a, b in zip(bounds[:-1], bounds[1:])), tuple(sizes),
                                          f"{describe_node(node)} at {code_location(node)}")
        self.respell(node, x, sizes, dim)


class RollRule(MovementRule):
    """torch.roll(x, shifts, dims): label-pushed when the channel dim is not shifted, else frozen."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        x, dims = node.args[0], arg(node, 2, "dims")
        d = ctx.channel_dim(x)
        if isinstance(d, int):
            rank = len(ctx.shape(x))
            rolled = None if dims is None else {r % rank for r in ((dims,) if isinstance(dims, int) else dims)}
            if rolled is None or d in rolled:
                reason = f"{describe_node(node)} shifts the channel dim (or the flattened tensor)"
                return Effect(None, freezes=freeze_inputs(node, ctx, reason))
        return super().couple(node, ctx)
