"""Recording shapes with stand-ins: the analysed model's heavy layers, and the light ops past them, are not computed.

The analysis reads each node's shape and dtype and the ints computed from shapes, never a tensor's
values (trace.TensorMeta). So where a layer's rule offers a stand-in (`Rule.stand_in`: convolutions
and linear layers of at least HEAVY_MACS multiply-adds), the rule computes its output's shape from the
op's definition (the formula torch documents, after the checks the op makes) and the layer's output is
zeros of that shape: the layer is not computed. (Not torch's meta kernels, whose first call imports
sympy, nor a dispatch mode to watch the ops, whose first use imports torch._dynamo: ~0.4 s and more.)

A tensor computed from a stand-in then has the right shape, and its values are zeros. A light op that reads
one (a batch norm, an activation, a sum: computing it would give no real values either) stands in too where
its rule offers `Rule.stand_in_past_stand_ins`: what the op returns but its values, an input it returns (in
place, identity) only where that input holds a stand-in's values. Any other node that reads one runs where
its rule says its op reads no values for these arguments (`Rule.reads_values_in`: the
shapes it returns follow from shapes alone) and it writes into no other tensor it reads (their version
counters; a parameter or buffer written is restored). Any other node, a hooked module
and an op without a rule stop the run, and the graph is recorded again computing every op
(`trace.record_values`), as it is when any node fails. Ints computed from shapes are exact. The pruned
model's own check run always computes every op (passes/base.py).

A rule whose `stand_in` raises has a bug (an invalid call gets None, so that the op's own error speaks): the
layer is then computed, or, with `raise_rule_errors` (strict=True, GRAPHPRUNE_RULE_ERRORS=raise), RuleError
names the rule and the node.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx

from .errors import InputError, RuleError
from .moduletree import tree_tables
from .trace import call_op, record_values, run_node

__all__ = ["HEAVY_MACS", "record_shapes", "zeros_for", "dense_float", "zeros_laid_out_as", "ValuesRead"]

# From about this many multiply-adds up, a layer costs more to compute than a stand-in (its shape and zeros) on one
# x86 core: a 3x3 convolution of 2.4 M takes 0.12-0.16 ms (bench/standins.py prints what the zoo saves)
HEAVY_MACS = 2_000_000

RuleOf = Callable[[fx.Node, Callable], Any]  # the rule of a node calling an op (RuleTable.for_call), or None

_FULL_PRECISION = frozenset({torch.float32, torch.float64})


class ValuesRead(Exception):
    """A node reads a tensor computed from a stand-in in a way that may need its values."""


def dense_float(x: Any) -> bool:
    """`x` is a float32/float64 tensor laid out densely (contiguous, or channels-last): an element-wise op's output on
    it has its shape, dtype and strides (`zeros_laid_out_as`)."""
    return isinstance(x, torch.Tensor) and x.dtype in _FULL_PRECISION and (
        x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
        or (x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)))


def zeros_laid_out_as(x: Any) -> torch.Tensor | None:
    """Zeros of `x`'s shape, dtype, device and strides where `x` is `dense_float`, else None."""
    return torch.zeros_like(x) if dense_float(x) else None


def zeros_for(shape: tuple[int, ...], macs: int, *tensors: torch.Tensor | None) -> torch.Tensor | None:
    """A layer's stand-in: contiguous zeros of `shape` in the dtype and on the device of `tensors` (the layer's input
    and weights; None for an absent bias). None when the layer has fewer than HEAVY_MACS multiply-adds, or when a
    tensor is not contiguous (a kernel may then answer in another memory format) or not all one float32/float64
    dtype (the device may lack a kernel for it, which computing the layer reports)."""
    given = [t for t in tensors if t is not None]
    if macs < HEAVY_MACS or not all(t.dtype == given[0].dtype and t.dtype in _FULL_PRECISION and t.is_contiguous()
                                    for t in given):
        return None
    return torch.zeros(shape, dtype=given[0].dtype, device=given[0].device)


@torch.no_grad()
def record_shapes(gm: fx.GraphModule, inputs: tuple, rule_of: RuleOf, raise_rule_errors: bool = False) -> int:
    """trace.record_values, the layers whose rule (`rule_of(node, op)`) gives a stand-in not computed; recorded
    again computing every op when a node computed from a stand-in reads values or any node fails. Returns how
    many layers stood in (0 when recorded again). `raise_rule_errors`: a failing `stand_in` raises RuleError."""
    run = _StandInRun(rule_of, raise_rule_errors)
    try:
        record_values(gm, inputs, run)
    except InputError as exc:
        if isinstance(exc.__cause__, RuleError):
            raise exc.__cause__  # a bug in a rule, not the inputs
        record_values(gm, inputs)
        return 0
    return run.stand_ins


class _StandInRun:
    """run_node for record_values: stand-ins where a rule gives one, the nodes that read them run while they may."""

    def __init__(self, rule_of: RuleOf, raise_rule_errors: bool = False):
        self.rule_of, self.raise_rule_errors = rule_of, raise_rule_errors
        self.derived: set[fx.Node] = set()  # the nodes whose values hold tensors computed from stand-ins
        self.stand_ins = 0
        self._state: frozenset[int] | None = None

    def __call__(self, gm: fx.GraphModule, n: fx.Node, env: dict, modules: dict) -> Any:
        if n.op not in ("call_module", "call_function", "call_method"):
            return run_node(gm, n, env, modules)
        op = call_op(n, modules)
        args = fx.node.map_arg(n.args, env.__getitem__)
        kwargs = fx.node.map_arg(n.kwargs, env.__getitem__)
        hooked = isinstance(op, torch.nn.Module) and _has_hooks(op)  # a hook may change the output, or read it
        rule = None if hooked else self.rule_of(n, op)
        value = self.stand_in(rule, n, op, args, kwargs) if rule is not None else None
        if value is not None:
            self.derived.add(n)
            self.stand_ins += 1
            return value
        if not (self.derived and any(a in self.derived for a in n.all_input_nodes)):
            return op(*args, **kwargs)
        if rule is None or rule.reads_values_in(args, kwargs):
            raise ValuesRead(f"{n.name} reads a value computed from a stand-in")
        value = self.stand_in(rule, n, op, args, kwargs, past_stand_ins=True)
        if value is not None and not any(value is env[a] for a in n.all_input_nodes if a not in self.derived):
            self.derived.add(n)  # (an input computed for real that the op writes into is no stand-in: computed below)
            return value
        exact = [t for a in n.all_input_nodes if a not in self.derived for t in _tensors(env[a])]
        versions = [t._version for t in exact]
        state = [(t, t.clone()) for t in exact if _storage_address(t) in self.state(gm)]
        value = op(*args, **kwargs)
        if any(t._version != v for t, v in zip(exact, versions)):
            for t, before in state:  # the model keeps the values a real run leaves; activations are recomputed
                t.copy_(before)
            raise ValuesRead(f"{n.name} writes a value computed from a stand-in into a tensor it reads")
        if _tensors(value):
            self.derived.add(n)
        return value

    def stand_in(self, rule, n: fx.Node, op: Callable, args: tuple, kwargs: dict,
                 past_stand_ins: bool = False) -> Any:
        """`rule.stand_in` (`rule.stand_in_past_stand_ins` for a node that reads a stand-in's output); a rule that
        raises has a bug: the layer is computed, or RuleError is raised."""
        try:
            return (rule.stand_in_past_stand_ins if past_stand_ins else rule.stand_in)(op, args, kwargs)
        except Exception as exc:
            if self.raise_rule_errors:
                raise RuleError(f"rule {type(rule).__name__} failed to stand in for `{n.name}` ({n.op} {n.target}): "
                                f"{type(exc).__name__}: {exc}") from exc
            return None

    def state(self, gm: fx.GraphModule) -> frozenset[int]:
        """The storages of `gm`'s parameters and buffers (found once)."""
        if self._state is None:
            tables = tree_tables(gm)
            self._state = frozenset(_storage_address(t) for t in [*tables.params.values(), *tables.buffers.values()])
        return self._state


def _storage_address(t: torch.Tensor) -> int:
    """Where `t`'s storage starts: `t.untyped_storage().data_ptr()`, without making (and keeping) a Python storage
    object for every parameter and buffer."""
    return t.data_ptr() - t.storage_offset() * t.element_size()


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a node's value (itself, or the parts of a tuple or list)."""
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in _tensors(v)] if isinstance(value, (tuple, list)) else []


def _has_hooks(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)
