"""Reading a call site the same way whatever its spelling.

One op is spelled several ways: a module call (`nn.Conv2d` in an fx graph, its weight an
attribute of the module), a functional call (`F.conv2d(x, w)`, its weight a `get_attr` or a
computed node) and a Core ATen overload (`aten.convolution`, from torch.export). A family
rule reads every spelling through an adapter into one view, and meets its tensors as
`Operand`s, so its coupling, shrink and cost are written once.

- `arg` / `set_arg`: an argument where the call site passed it, by position or keyword.
- `Operand`: a tensor a layer reads (a module attribute or a graph node) and its slots.
- `part_users`, `used_whole`, `whole_use_freezes`: where the graph reads a tuple output part by part, or whole.
- `first_outputs`: an op returning (output, statistics...) carries channels on output 0.
- `channel_factor`: the activation slot a MAC term scales with, if that dim carries channels.
- `kept_count`, `kept_bounds`: a pruned dim's kept count, a slice of it re-cut.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from ..groups import Coupling, Freeze, Role, Slot
from ..trace import META_KEY
from .base import AnalysisContext, GraphView, ShrinkContext, describe_node


def arg(node: fx.Node, position: int | None, name: str, default=None):
    """The argument at `position` (None: keyword only), else the keyword `name`, else `default`."""
    return given(node.args, node.kwargs, position, name, default)


def given(args: tuple, kwargs: dict, position: int | None, name: str, default=None):
    """`arg` of a call's argument values."""
    if position is not None and len(args) > position:
        return args[position]
    return kwargs.get(name, default)


def holds_mask(value) -> bool:
    """Whether an argument value is a boolean (or uint8) tensor, or a tuple or list holding one."""
    if isinstance(value, torch.Tensor):
        return value.dtype in (torch.bool, torch.uint8)
    return isinstance(value, (tuple, list)) and any(map(holds_mask, value))


def set_arg(node: fx.Node, position: int, name: str, value) -> None:
    """Set an argument where the call site passed it (positionally, or by keyword otherwise)."""
    if len(node.args) > position:
        args = list(node.args)
        args[position] = value
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, name: value}


@dataclass(frozen=True)
class Operand:
    """A tensor a layer reads: `qualname`, a module's parameter or buffer (module spelling), or `node`, a graph
    value (a `get_attr` of a parameter, or a computed tensor: functional and ATen spellings)."""

    node: fx.Node | None = None
    qualname: str | None = None

    @staticmethod
    def of_module(node: fx.Node, view: GraphView, attr: str) -> "Operand | None":
        """The module's tensor attribute `attr`, or None when the module has none (bias=False)."""
        qualname = f"{node.target}.{attr}" if node.target else attr
        return Operand(qualname=qualname) if qualname in view.params or qualname in view.buffers else None

    @staticmethod
    def of_arg(value) -> "Operand | None":
        return Operand(node=value) if isinstance(value, fx.Node) else None

    def slot(self, ctx: AnalysisContext, dim: int, role: Role) -> Slot:
        """Its dim `dim` as a slot: the parameter's own (tied weights share it), or the activation's.

        A vector constant's only non-trivial dim is declared by the analysis (coupled to its
        parameter slot), so it is reached through the node; a computed tensor through its producer.
        """
        if self.qualname is not None:
            return ctx.param_slot(self.qualname, dim, role)
        if ctx.constant(self.node) is None or ctx.channel_dim(self.node) == dim:
            return ctx.input_slot(self.node, dim)
        return ctx.param_slot(self.node.target, dim, role)

    def parameter(self, view: GraphView) -> str | None:
        """The qualified name of the parameter it reads, None for a computed tensor."""
        if self.qualname is not None:
            return self.qualname
        return self.node.target if view.constant(self.node) is not None else None

    def shape(self, view: GraphView) -> tuple[int, ...]:
        if self.qualname is not None:
            return tuple(view.params.get(self.qualname, view.buffers.get(self.qualname)).shape)
        return view.shape(self.node)


def part_users(node: fx.Node, index: int) -> list[fx.Node]:
    """The `getitem(node, i)` nodes with i part `index` (a negative i counts from the end of the recorded tuple:
    `parts[-1]`): where the graph reads part `index` of a tuple output."""
    count = len(value) if isinstance(value := node.meta.get(META_KEY), (tuple, list)) else None
    return [u for u in node.users if _reads_one_part(u)
            and (u.args[1] % count if count and u.args[1] < 0 else u.args[1]) == index]


def _reads_one_part(user: fx.Node) -> bool:
    return user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int)


def used_whole(node: fx.Node) -> bool:
    """A user of the tuple output `node` reads it other than part by part, an int at a time (a slice of the parts,
    `parts[1:]`, is used whole too): no part can be resized alone."""
    return any(not _reads_one_part(u) for u in node.users)


def whole_use_freezes(node: fx.Node, slots) -> list[Freeze]:
    """Freezes of `slots` when the tuple output `node` is used whole (`used_whole`), else none."""
    return [Freeze(s, f"the parts of {describe_node(node)} are used whole") for s in slots] if used_whole(node) else []


def first_outputs(node: fx.Node, ctx: AnalysisContext, dim: int, source: Slot) -> tuple[list, list]:
    """Couplings from `source` to dim `dim` of every `getitem(node, 0)`; a tuple used whole freezes `source`."""
    couplings = [Coupling(source, ctx.output_slot(u, dim)) for u in part_users(node, 0)]
    freezes = [Freeze(source, f"the outputs of {describe_node(node)} are used whole")] if used_whole(node) else []
    return couplings, freezes


def channel_factor(view: GraphView, node: fx.Node, dim: int) -> tuple[Slot, ...]:
    """(Slot(node, dim),) when `dim` is the channel dim declared for `node`, else (): a MAC term's factor."""
    return (Slot(node.name, dim),) if view.channel_dim(node) == dim else ()


def kept_count(ctx: ShrinkContext, node: fx.Node, dim: int) -> int | None:
    """How many positions of activation slot (node, dim) the plan keeps; None when it is not pruned."""
    kept = ctx.kept(node.name, dim)
    return None if kept is None else len(kept)


def cut_dim(node: fx.Node, ctx, position: int) -> int:
    """The dim (argument `position`, named "dim", default 0; made non-negative) along which a slice, split or
    scatter `node` cuts its first argument."""
    return arg(node, position, "dim", 0) % len(ctx.value(node.args[0]).shape)


def kept_on_dim(ctx: ShrinkContext, node: fx.Node, dim: int):
    """The kept positions of `node` on `dim` when `dim` is its declared channel dim and the plan prunes it, else None
    (a slice, split or scatter along another dim keeps its sizes)."""
    return ctx.kept(node.name, dim) if ctx.declared.get(node.name) == dim else None


def grouped_together(slot: Slot, channels: int, width: int) -> Coupling:
    """Channels c and c' of `slot` go together when c // width == c' // width (a norm group, a conv group)."""
    c = np.arange(channels)
    return Coupling(slot, slot, c, (c // width) * width)


def kept_bounds(kept, start: int, stop: int) -> tuple[int, int]:
    """A slice [start, stop) of a pruned dim, re-cut to the kept positions `kept` (sorted): the kept ones before
    `start` and before `stop`."""
    return int(np.count_nonzero(kept < start)), int(np.count_nonzero(kept < stop))
