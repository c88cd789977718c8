"""The rule protocol and the immutable rule table.

A rule owns everything about one op family, whatever its spelling (a module, a functional call, a
Tensor method, an ATen overload: see callsite.py), in four parts:
- `couple(node, ctx) -> Effect` (analysis, pure): which channel dims of the node's inputs,
  output and parameters are tied, and through which index maps;
- `shrink(node, ctx)` (transformation): updates module attributes or graph constants once
  parameters have been sliced;
- `cost(node, view) -> (MacTerm, ...)` (planning and the report): the op's multiply-
  accumulates, each term scaling with the kept share of the channel slots it names, so
  one formula serves both prediction (before a rewrite) and measurement (after it);
  `weighted_layer(node, view)` says whether the op is a conv/linear-like layer (its kind
  sets the runtime's channel step, and its inputs are what activation criteria read);
- `resize(module)`: a module's size attributes from its sliced tensors (rewrite and eager rebuild).
Rules are looked up by module type (through the MRO) or by the callable itself (a Python
function, a Tensor method or an ATen OpOverload), never by name.
"""
from __future__ import annotations

import operator
from collections import Counter
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.fx as fx

import enum
from dataclasses import dataclass

from ..groups import Coupling, Effect, Freeze, Role, Slot
from ..moduletree import tree_tables
from ..trace import TensorMeta, value_meta


class LayerKind(enum.Enum):
    """Kinds of weighted layers whose channel counts a runtime cares about."""

    DENSE_CONV = "dense conv"
    GROUPED_CONV = "grouped/depthwise conv"
    LINEAR = "linear"


@dataclass(frozen=True)
class WeightedLayer:
    """A conv/linear-like op: its kind, the qualified names of its weight parameters, the channel multiple
    `step` its kernel needs to run at all (stride alignment), whatever the deployment target asks, and its
    `groups` G: a grouped conv's weight holds one group's inputs in dim 1, so the layer reads G times as many."""

    kind: LayerKind
    weights: tuple[str, ...]
    step: int = 1
    groups: int = 1


@dataclass(frozen=True)
class MacTerm:
    """`macs` at full width, scaling with the kept share of each slot in `factors`.

    Once a plan keeps k_s of n_s positions of each factor slot s, the term costs
    macs * prod(k_s) / prod(n_s): exact for conv, linear, matmul and attention, whose
    MACs are products of the widths they read and write.
    """

    macs: int
    factors: tuple[Slot, ...] = ()


class Unsupported(Exception):
    """Raised by `couple` for a call site the rule does not follow: the analysis freezes it as an op without a rule."""


def aligned_dims(out, src, dims: frozenset[int]) -> frozenset[int]:
    """The dims of `src` aligned from the right with `dims` of `out` (broadcasting moves no dim); none unless both
    are tensors."""
    if not (isinstance(out, TensorMeta) and isinstance(src, TensorMeta)):
        return frozenset()
    shift = len(out.shape) - len(src.shape)
    return frozenset(j for j in range(len(src.shape)) if j + shift in dims)


class Rule:
    """Base rule: subclasses implement `couple`; `shrink` and `resize` do nothing and `cost` is zero by default.

    Capabilities (class attributes the analysis asks, never the rule's class):
    - `reads_heads`: the op treats a (heads, head_dim) split of channels as heads (matmul, attention);
    - `carries_heads`: the op keeps such a split intact on the way into one (copies, broadcasting ops,
      reshapes), so the split is kept by whole heads; `head_dims_of_input` says which dims of an input lie
      inside a head (or along the sequence) when given dims of the output do: never the heads dim;
    - `rewrites_size_arguments`: `shrink` rewrites the sizes passed as its arguments after the first
      (reshape sizes, split sizes, a layer norm's shape), so a size query feeding them is a shape, not a value;
    - `reads_values`: the op's output shapes or Python results may depend on its tensors' values. False: they
      follow from its inputs' shapes and its other arguments alone, so inputs of the right shape holding
      other values (a `stand_in`'s zeros) give them exactly (standins.py); `reads_values_in` answers for
      one call, where the arguments decide (an index that is a tensor).
    """

    reads_heads = False
    carries_heads = False
    rewrites_size_arguments = False
    reads_values = True

    def couple(self, node: fx.Node, ctx: "AnalysisContext") -> Effect:
        raise NotImplementedError

    def head_dims_of_input(self, node: fx.Node, source: fx.Node, dims: frozenset[int]) -> frozenset[int]:
        """The dims of `source` that are no heads dim when `dims` of `node`'s output, on the way into attention, are
        none: by default those aligned with them from the right (copies and broadcasting move no dim)."""
        return aligned_dims(value_meta(node), value_meta(source), dims)

    def shrink(self, node: fx.Node, ctx: "ShrinkContext") -> None:
        return None

    def resize(self, module: torch.nn.Module) -> torch.nn.Module | None:
        """For a module spelling: set its size attributes from its sliced tensors (both the rewrite of a graph and
        the rebuild of the caller's module call this); returns the module to use (itself, or a replacement), or
        None when it is not a module this rule resizes."""
        return None

    def cost(self, node: fx.Node, view: "GraphView") -> tuple[MacTerm, ...]:
        return ()

    def weighted_layer(self, node: fx.Node, view: "GraphView") -> WeightedLayer | None:
        return None

    def reads_values_in(self, args: tuple, kwargs: dict) -> bool:
        """`reads_values` for a call with these argument values."""
        return self.reads_values

    def stand_in(self, op: Callable, args: tuple, kwargs: dict) -> Any:
        """Zeros shaped as `op(*args, **kwargs)`'s output (a tensor, or the tuple the op returns), found without
        computing it, where computing it costs more (standins.py); None: compute it. `op` is the module, function
        or method the node calls."""
        return None

    def stand_in_past_stand_ins(self, op: Callable, args: tuple, kwargs: dict) -> Any:
        """What `op(*args, **kwargs)` returns, but its values, for a call that reads a stand-in's output (standins.py):
        the values computed would be no real values either, so a light op (a norm, an activation, a sum) stands in
        whatever it costs. Its output where it returns one of its arguments (in place, identity), else zeros of the
        output's shape, dtype and strides; None: compute it."""
        return None

    def renormalises(self, node: fx.Node, view: "GraphView") -> bool:
        """The op takes a statistic over the channel dim of its first input (LayerNorm, a normalisation written by
        hand, softmax over channels): pruning those channels keeps the model valid, not exact (the report says)."""
        return False


def is_call(node: fx.Node) -> bool:
    """The node runs an op (a module, a function or a Tensor method): one a rule may cover."""
    return node.op in ("call_module", "call_function", "call_method")


def callable_of(node: fx.Node) -> Callable | None:
    """The function an FX call_function/call_method node runs: `torch.cat`, `torch.Tensor.view`..."""
    if node.op == "call_function":
        return node.target
    if node.op == "call_method":
        return getattr(torch.Tensor, node.target, None)
    return None


def queried_dims(arg: fx.Node, depth: int = 8) -> set[tuple[str, int]]:
    """The (tensor, dim) sizes an int-valued node is computed from (x.size(1), x.shape[2] // 4, aten.sym_size(x, 0)...)."""
    if depth == 0 or not isinstance(arg, fx.Node):
        return set()
    is_sym_size = arg.op == "call_function" and arg.target is torch.ops.aten.sym_size.int  # the export frontend's
    if (arg.op == "call_method" and arg.target == "size" or is_sym_size) and len(arg.args) > 1:
        tensor, dim = arg.args[0], arg.args[1]
        return {(tensor.name, dim % len(tensor.meta["gp_value"].shape))}
    if arg.target is operator.getitem and isinstance(arg.args[0], fx.Node):
        src = arg.args[0]
        is_size = (src.op == "call_method" and src.target == "size") or (src.op == "call_function" and src.args[1:] == ("shape",))
        if is_size and isinstance(arg.args[1], int):
            tensor = src.args[0]
            return {(tensor.name, arg.args[1] % len(tensor.meta["gp_value"].shape))}
    return set().union(*(queried_dims(a, depth - 1) for a in arg.all_input_nodes)) if arg.all_input_nodes else set()


class RuleTable:
    """Immutable mapping from module types and callables to rules. `with_rule` returns a new table."""

    def __init__(self, modules: Mapping[type, Rule] | None = None, functions: Mapping[Callable, Rule] | None = None):
        self._modules = MappingProxyType(dict(modules or {}))
        self._functions = MappingProxyType(dict(functions or {}))
        self._by_class: dict[tuple[type, Any], Rule | None] = {}  # (class, its forward) -> for_module's answer

    def with_rule(self, key: type | Callable, rule: Rule) -> "RuleTable":
        """A new table where `key` (an nn.Module subclass, or a function/method) uses `rule`."""
        return self.with_rules({key: rule})

    def with_rules(self, rules: Mapping[type | Callable, Rule]) -> "RuleTable":
        """A new table where every key of `rules` uses its rule: one family's spellings, e.g.
        `{MyGain: rule, torch.ops.my.gain.default: rule}` for a module (fx) and the op it calls (torch.export).
        The tables are copied once, whatever the number of rules."""
        modules, functions = dict(self._modules), dict(self._functions)
        for key, rule in rules.items():
            if not isinstance(rule, Rule):
                raise TypeError(f"rule for {key!r} must be a graphprune Rule instance, got {type(rule).__name__}")
            if isinstance(key, type) and issubclass(key, torch.nn.Module):
                modules[key] = rule
            elif callable(key):
                functions[key] = rule
            else:
                raise TypeError(f"rule key must be an nn.Module subclass or a callable, got {key!r}")
        return RuleTable(modules, functions)

    def mapped(self, change: Callable[[Rule], Rule]) -> "RuleTable":
        """The table with `change(rule)` in place of every rule (one family's setting changed, say); a rule
        shared by several keys is changed once and stays shared. This very table when no rule changes."""
        changed: dict[int, tuple[Rule, Rule]] = {}  # id -> (rule, its change)

        def once(rule: Rule) -> Rule:
            if id(rule) not in changed:
                changed[id(rule)] = (rule, change(rule))
            return changed[id(rule)][1]
        modules = {k: once(r) for k, r in self._modules.items()}
        functions = {k: once(r) for k, r in self._functions.items()}
        return self if all(old is new for old, new in changed.values()) else RuleTable(modules, functions)

    def for_module(self, module: torch.nn.Module) -> Rule | None:
        """The rule of the module's class, or of a base class whose forward it does not override (remembered per
        class and forward: an analysis asks about every node several times)."""
        key = (type(module), type(module).forward)
        try:
            return self._by_class[key]
        except KeyError:
            rule = self._by_class[key] = next((self._modules[cls] for cls in key[0].__mro__ if cls in self._modules
                                               and (cls is key[0] or cls.forward is key[1])), None)
            return rule

    def for_class(self, module: torch.nn.Module) -> Rule | None:
        """The rule of the module's class or of its nearest base class with one, whatever forward it runs: who
        resizes it (its size attributes follow its tensors even where a subclass computes differently)."""
        return next((self._modules[cls] for cls in type(module).__mro__ if cls in self._modules), None)

    def has_module_rule(self, module: torch.nn.Module) -> bool:
        return self.for_module(module) is not None

    def for_call(self, node: fx.Node, op: Callable) -> Rule | None:
        """The rule of `node`, a call of `op` (its module, function or method)."""
        return self.for_module(op) if node.op == "call_module" else self.for_node(node, {})

    def for_node(self, node: fx.Node, modules: Mapping[str, torch.nn.Module]) -> Rule | None:
        if node.op == "call_module":
            return self.for_module(modules[node.target])
        fn = callable_of(node)
        if fn is None:
            return None
        try:
            return self._functions.get(fn)
        except TypeError:  # unhashable target
            return None


def describe_node(node: fx.Node, modules: Mapping[str, torch.nn.Module] | None = None) -> str:
    if node.op == "call_module" and modules is not None:
        return f"`{node.name}` (module `{node.target}`: {type(modules[node.target]).__name__})"
    if node.op == "call_function":
        name = getattr(node.target, "__qualname__", None) or getattr(node.target, "__name__", str(node.target))
        mod = getattr(node.target, "__module__", None) or ""
        if node.target in (operator.getitem,):
            return f"`{node.name}` (operator.getitem)"
        return f"`{node.name}` ({mod + '.' if mod and not mod.startswith('_') else ''}{name})"
    if node.op == "call_method":
        return f"`{node.name}` (Tensor.{node.target})"
    return f"`{node.name}` ({node.op})"


def freeze_inputs(node: fx.Node, ctx: "AnalysisContext", reason: str) -> tuple[Freeze, ...]:
    """Freezes for the channel slot of every tensor input of `node` that has one."""
    freezes = []
    for a in node.all_input_nodes:
        d = ctx.channel_dim(a)
        if ctx.is_tensor(a) and isinstance(d, int):
            freezes.append(Freeze(ctx.input_slot(a, d), reason))
    return tuple(freezes)


def tensor_names(gm: fx.GraphModule, view: "GraphView | None" = None) -> dict[str, str]:
    """Every parameter/buffer name -> the first name of the same tensor (aliases of a tied weight share one).
    `view`: a GraphView of `gm` whose parameter and buffer tables are read instead of walking `gm` again."""
    if view is None:
        view = GraphView(gm)
    first: dict[int, str] = {}
    names = {}
    for name, t in [*view.params.items(), *view.buffers.items()]:
        names[name] = first.setdefault(id(t), name)
    return names


class GraphView:
    """Read-only access to a traced graph: node values, modules, parameters and declared channel dims.

    `modules`, `params` (every name of a tied parameter) and `buffers` are the module tree's tables
    (moduletree.tree_tables, one walk); `tables`: another view of the same GraphModule, not modified since,
    whose tables this one shares."""

    def __init__(self, gm: fx.GraphModule, declared: Mapping[str, Any] | None = None,
                 tables: "GraphView | None" = None):
        self.gm = gm
        self.modules, self.params, self.buffers = tree_tables(gm) if tables is None else (
            tables.modules, tables.params, tables.buffers)
        self.declared: dict[str, Any] = dict(declared or {})

    def value(self, node: Any) -> Any:
        return value_meta(node) if isinstance(node, fx.Node) else node

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        v = value_meta(node)
        if not isinstance(v, TensorMeta):
            raise TypeError(f"{node.name} is not a tensor")
        return v.shape

    def is_tensor(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and isinstance(value_meta(node), TensorMeta)

    def module(self, node: fx.Node) -> torch.nn.Module:
        return self.modules[node.target]

    def channel_dim(self, node: fx.Node) -> Any:
        return self.declared.get(node.name)

    def constant(self, node: fx.Node) -> torch.Tensor | None:
        """The parameter or buffer a get_attr node reads, if it is one."""
        if node.op != "get_attr":
            return None
        return self.params.get(node.target, self.buffers.get(node.target))


class AnalysisContext(GraphView):
    """What a rule may read and declare during analysis: the graph, and slot constructors.

    `input_slot` on a dim that the producing node did not declare records a freeze, so
    channels of unknown origin are never pruned.
    """

    def __init__(self, gm: fx.GraphModule, tables: GraphView | None = None):
        super().__init__(gm, tables=tables)
        self.canonical = tensor_names(gm, self)
        names_per_tensor = Counter(self.canonical.values())
        self.tied = frozenset(n for n, first in self.canonical.items() if names_per_tensor[first] > 1)
        self.ties: list[Coupling] = []  # one tensor dim read in two roles: its slots are the same channels
        self.producer_note: dict[str, str] = {}
        self.sizes: dict[Slot, int] = {}
        self.freezes: list[Freeze] = []
        self.head_splits: Mapping[str, frozenset[int]] = {}  # nodes feeding attention -> head_dims (dependencies)
        self._param_roles: dict[tuple[str, int], list[Role]] = {}  # tensor dim -> the roles it has slots in

    def _register(self, slot: Slot, size: int) -> Slot:
        self.sizes[slot] = size
        return slot

    def output_slot(self, node: fx.Node, dim: int) -> Slot:
        """The channel dim `dim` of `node`'s own output (which `node`'s rule declares)."""
        return self._register(Slot(node.name, dim), self.shape(node)[dim])

    def picked_slot(self, node: fx.Node, dim: int) -> Slot:
        """A slot of one position for the channel that `node` takes out of its input's dim `dim`, dropping that dim
        (`x[:, i]`, `select`): `node`'s output has no channel dim, so the slot is named apart from every node and
        parameter (`select_1[picked]`), and checks of node shapes pass it by."""
        return self._register(Slot(f"{node.name}[picked]", dim), 1)

    def input_slot(self, node: fx.Node, dim: int) -> Slot:
        """Channel dim `dim` of an input tensor; records a freeze unless its producer declared that dim.

        When the producer declared another dim, its channels are frozen too: the consumer reads `dim`, so where
        the declared channels go is followed by no one (a LayerNorm over (H, W) of NCHW channels).
        """
        slot = self._register(Slot(node.name, dim), self.shape(node)[dim])
        declared = self.channel_dim(node)
        if declared != dim:
            reason = self._undeclared_reason(node, dim, declared)
            self.freezes.append(Freeze(slot, reason))
            if isinstance(declared, int) and self.is_tensor(node):
                lost = self._register(Slot(node.name, declared), self.shape(node)[declared])
                self.freezes.append(Freeze(lost, reason))
        return slot

    def param_slot(self, qualname: str, dim: int, role: Role) -> Slot:
        """Dim `dim` of a parameter or buffer, under the first name of its tensor (tied weights are one tensor).

        A tensor dim read in a second role (a tied embedding and output layer: PRODUCER and
        CONSUMER) gets its own slot, tied position for position to the first, so both roles
        are one set of channels and the dim is sliced once.
        """
        tensor = self.params.get(qualname, self.buffers.get(qualname))
        if tensor is None:
            raise KeyError(qualname)
        name = self.canonical.get(qualname, qualname)
        slot = Slot(name, dim, role)
        roles = self._param_roles.setdefault((name, dim), [])
        if role not in roles:  # a new slot of this tensor dim: tied to the slots of its other roles
            self.ties.extend(Coupling(Slot(name, dim, other), slot) for other in roles)
            roles.append(role)
        return self._register(slot, tensor.shape[dim])

    def module_param_slot(self, node: fx.Node, attr: str, dim: int, role: Role) -> Slot | None:
        """Slot of parameter/buffer `attr` of the module `node` calls, or None if it has none."""
        qualname = f"{node.target}.{attr}" if node.target else attr
        if qualname not in self.params and qualname not in self.buffers:
            return None
        return self.param_slot(qualname, dim, role)

    def _undeclared_reason(self, node: fx.Node, dim: int, declared: Any) -> str:
        if node.op == "placeholder":
            return f"channels come from model input `{node.name}`"
        if node.op == "get_attr":
            return f"channels come from constant `{node.target}`"
        note = self.producer_note.get(node.name)
        if note:
            return note
        if declared is None:
            return f"{describe_node(node, self.modules)} has no channel dim graphprune can follow"
        return f"{describe_node(node, self.modules)} carries channels on dim {declared}, but a consumer reads dim {dim}"


class ShrinkContext(GraphView):
    """What a rule may read while rewriting: the graph (values from before the rewrite) and kept positions per slot."""

    def __init__(self, gm: fx.GraphModule, kept: Mapping[Slot, np.ndarray], declared: Mapping[str, Any],
                 tables: GraphView | None = None):
        super().__init__(gm, declared, tables)
        self._kept = {(s.name, s.dim): k for s, k in kept.items() if not s.is_param}

    def kept(self, name: str, dim: int) -> np.ndarray | None:
        """Positions kept in the activation slot (node name, dim), or None if it is not pruned."""
        return self._kept.get((name, dim))
