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

import operator

import numpy as np
import torch
import torch.fx as fx

from ..errors import RewriteError
from ..groups import Coupling, Effect, Freeze, connected_labels
from ..trace import META_KEY, TensorMeta, value_meta
from .base import AnalysisContext, Rule, ShrinkContext, callable_of, describe_node, freeze_inputs, queried_dims
from .callsite import arg, kept_bounds, kept_count


def _run_on_labels(node: fx.Node, ctx: AnalysisContext):
    """Run the node's op on label tensors. Returns (output, [(input node, dim, first label)])."""
    sources = []
    next_label = 0

    def to_label(a: fx.Node):
        nonlocal next_label
        v = ctx.value(a)
        if not isinstance(v, TensorMeta):
            return v
        d = ctx.channel_dim(a)
        if not isinstance(d, int):
            return torch.full(v.shape, -1, dtype=torch.int64)
        n = v.shape[d]
        view = [n if i == d else 1 for i in range(len(v.shape))]
        labels = torch.arange(next_label, next_label + n, dtype=torch.int64).view(view).expand(v.shape).contiguous()
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
    lab = moved.ravel()
    key = np.unique(lab * n + pos)
    lab, pos = key // n, key % n
    uniq, lab_idx = np.unique(lab, return_inverse=True)
    comps = connected_labels(n + len(uniq), pos, n + lab_idx)
    return int(comps.max()) + 1, pos, lab


def read_channel_dim(t: torch.Tensor, heads=()):
    """(dim, positions, labels) of a labelled output, or a string saying why there is none.

    `heads`: the head_dim sizes of the attention the output leads to (or of parts of a head: see
    `MovementRule.head_dims_of_input`); the trailing dims whose sizes multiply to one of them lie inside a head
    (head_dim itself, or (2, r/2) of an interleaved rotary's stack), and are never the channel dim when
    another dim varies. Ties go to the inner dim.
    """
    a = t.numpy()
    known = a >= 0
    if not known.any():
        return None
    if not known.all():
        return "mixes channels with a tensor whose channels graphprune cannot follow"
    varying = [k for k in range(a.ndim) if a.shape[k] > 1 and not (a == a.take([0], axis=k)).all()]
    if not varying:
        return "selects individual channels by index"
    if len(varying) == 1:
        k = varying[0]
        labels = np.moveaxis(a, k, 0).reshape(a.shape[k], -1)[:, 0]
        return k, np.arange(a.shape[k]), labels
    inside = next((k for k in range(a.ndim) if int(np.prod(a.shape[k:])) in heads), a.ndim)
    best = None
    for k in [k for k in varying if k < inside] or varying:
        atoms, pos, lab = _atoms_along(a, k)
        if best is None or atoms >= best[0]:
            best = (atoms, k, pos, lab)
    return best[1], best[2], best[3]


def _getitem_users(node: fx.Node, index: int):
    return [u for u in node.users if u.op == "call_function" and u.target is operator.getitem and u.args[1] == index]


class MovementRule(Rule):
    """Data movement with no shape constants to rewrite (cat, permute, transpose, flatten, ...)."""

    carries_heads = True  # a (heads, head_dim) split on the way into attention keeps the heads (see analysis)

    def head_dims_of_input(self, node: fx.Node, source: fx.Node, head_dim: int) -> tuple[int, ...]:
        """An output (or part) (..., head_dim) read from a source (..., m) with the same leading dims moved data
        along the last dim only (a slice, split or concatenation of it): the source's m positions lie inside
        heads too (q[..., :r] and q[..., r:] of partial rotary; q, k, v chunked from (..., 3 x head_dim))."""
        src, out = value_meta(source), value_meta(node)
        if not isinstance(src, TensorMeta) or src.shape[-1:] == (head_dim,):
            return (head_dim,)
        parts = out if isinstance(out, (tuple, list)) else (out,)
        inside = any(isinstance(p, TensorMeta) and p.shape[:-1] == src.shape[:-1] and p.shape[-1:] == (head_dim,)
                     for p in parts)
        return (head_dim, src.shape[-1]) if inside else (head_dim,)

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        out, sources = _run_on_labels(node, ctx)
        if not sources:
            return Effect(None)
        bases = np.array([b for _, _, b in sources])
        in_slots = [ctx.input_slot(a, d) for a, d, _ in sources]
        tuple_out = isinstance(out, (tuple, list))
        outs = list(out) if tuple_out else [out]
        dims, couplings, freezes = [], [], []
        for i, t in enumerate(outs):
            read = read_channel_dim(t, ctx.head_splits.get(node.name, ())) if isinstance(t, torch.Tensor) else None
            if not isinstance(read, tuple):
                dims.append(None)
                if isinstance(read, str):
                    reason = f"{describe_node(node, ctx.modules)} {read}"
                    freezes += [Freeze(s, reason) for s in in_slots]
                continue
            k, pos, lab = read
            dims.append(k)
            owners = [node] if not tuple_out else _getitem_users(node, i)
            src = np.searchsorted(bases, lab, side="right") - 1
            for owner in owners:
                out_slot = ctx.output_slot(owner, k)
                for j, in_slot in enumerate(in_slots):
                    mask = src == j
                    if mask.any():
                        couplings.append(Coupling(out_slot, in_slot, pos[mask], lab[mask] - bases[j]))
        if tuple_out and any(u.target is not operator.getitem for u in node.users):
            reason = f"the parts of {describe_node(node)} are used whole"
            freezes += [Freeze(s, reason) for s in in_slots]
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

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        d = ctx.declared.get(node.name)
        old_shape = ctx.value(node).shape
        new_shape = list(old_shape)
        if isinstance(d, int):
            new_shape[d] = kept_count(ctx, node, d) or old_shape[d]
        packed = node.op == "call_function" or (len(node.args) == 2 and isinstance(node.args[1], (tuple, list)))
        shape = list(node.args[1]) if packed else list(node.args[1:])
        for i, size in enumerate(shape):
            from_channels = isinstance(size, fx.Node) and any(ctx.kept(t, dim) is not None for t, dim in queried_dims(size))
            if from_channels:
                shape[i] = new_shape[i]
            elif i == d and size != -1 and new_shape[i] != old_shape[i]:
                shape[i] = _scaled(node, size, old_shape[i], new_shape[i]) if isinstance(size, fx.Node) else new_shape[i]
        if packed:
            node.args = (node.args[0], tuple(shape)) + tuple(node.args[2:])
        else:
            node.args = (node.args[0], *shape)


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

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        x = node.args[0]
        dim = arg(node, 2, "dim", 0) % len(ctx.value(x).shape)
        kept = ctx.kept(x.name, dim) if ctx.declared.get(x.name) == dim else None
        if kept is None:
            return
        bounds = np.cumsum([0] + [part.shape[dim] for part in ctx.value(node)])
        sizes = [int(np.count_nonzero((kept >= lo) & (kept < hi))) for lo, hi in zip(bounds[:-1], bounds[1:])]
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


class GetItemRule(MovementRule):
    """x[...]: tuple parts pass through; tensor slices with step 1 on the channel dim are re-cut."""

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        src, index = node.args
        if not ctx.is_tensor(src):  # a part of a split/chunk/tuple: its producer rule did the coupling
            dims = ctx.channel_dim(src)
            return Effect(dims[index] if isinstance(dims, tuple) and isinstance(index, int) else None)
        d = ctx.channel_dim(src)
        entry = _index_entry(index, d, len(ctx.shape(src)))
        if isinstance(d, int) and not (entry is None or (isinstance(entry, slice) and entry.step in (None, 1)
                                                         and not isinstance(entry.start, fx.Node)
                                                         and not isinstance(entry.stop, fx.Node))):
            reason = f"{describe_node(node)} indexes the channel dim with {entry!r}"
            return Effect(None, freezes=freeze_inputs(node, ctx, reason))
        return super().couple(node, ctx)

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        src, index = node.args
        d = ctx.declared.get(src.name)
        if not isinstance(ctx.value(src), TensorMeta) or not isinstance(d, int):
            return
        kept = ctx.kept(src.name, d)
        size = ctx.value(src).shape[d]
        entry = _index_entry(index, d, len(ctx.value(src).shape))
        if kept is None or not isinstance(entry, slice):
            return
        start, stop, _ = entry.indices(size)
        new = slice(*kept_bounds(kept, start, stop), None)
        node.args = (src, _replace_index_entry(index, d, len(ctx.value(src).shape), new))


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


def _index_entry(index, d, rank: int):
    if not isinstance(d, int):
        return None
    entries = _expand_index(index, rank)
    entry = entries[d]
    return None if entry == slice(None) else entry


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
