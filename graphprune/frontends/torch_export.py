"""The torch.export frontend: any spelling of an op becomes a Core ATen op.

`export_graph(model, args, kwargs)`:
1. `torch.export.export(copy, args, kwargs, strict=False)` on an eval-mode copy (the
   caller's model is never touched);
2. `run_decompositions` with torch's default table minus `KEEP_WHOLE`: ops whose rule is
   simpler and exact when they stay one node (linear, attention, a few activations);
3. `ep.module()`, rebuilt as a plain `fx.GraphModule` (the unlifted module refuses
   `eval()`): parameters and buffers are `get_attr` nodes with the user's qualified names
   (`layer1.0.conv1.weight`), so parameter slots keep those names; the input guard
   (`_guards_fn`) and unused parameter reads are removed;
4. values recorded on the flattened inputs (`flat_inputs`): the graph's placeholders
   take the tensors of `(args, kwargs)` in pytree order. Optional forward arguments not
   given keep their defaults (export bakes them in), so they are never required.

Shapes are static: the graph is specialised to the example inputs' shapes.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch.fx._pytree import tree_flatten_spec

from ..errors import InputError, TraceError
from ..trace import clone_module, record_values

_A = torch.ops.aten

KEEP_WHOLE = (
    _A.linear.default,  # else permute(weight) + addmm, with views around it for rank > 2 inputs
    _A.scaled_dot_product_attention.default,  # else ~20 ops (bmm, softmax, masking with where/any)
    _A._scaled_dot_product_flash_attention_for_cpu.default,
    _A.silu.default, _A.hardswish.default, _A.hardsigmoid.default, _A.mish.default, _A.relu6.default,
    _A.adaptive_avg_pool2d.default,  # else mean + as_strided (a layout restride graphprune cannot read)
    _A.pixel_shuffle.default, _A.pixel_unshuffle.default, _A.channel_shuffle.default,  # label-pushed whole
)
"""Ops kept as one node: each has an exact rule in `rules.aten`; decomposing them would only add nodes."""


def decomposition_table() -> dict:
    """torch.export's default decompositions minus `KEEP_WHOLE`."""
    table = torch.export.default_decompositions()
    for op in KEEP_WHOLE:
        table.pop(op, None)
    return table


def flat_inputs(gm: fx.GraphModule, args, kwargs: dict | None = None) -> tuple:
    """The leaves of `(args, kwargs)` in the order the graph's placeholders take them (its pytree input spec).

    Non-tensor leaves (ints, floats) are placeholders too; export specialised the graph to their values.
    """
    args = (args,) if isinstance(args, torch.Tensor) else tuple(args)
    return tuple(tree_flatten_spec((args, dict(kwargs or {})), gm._in_spec))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def _drop_guards(gm: fx.GraphModule) -> None:
    """Remove the input-shape guard call `ep.module()` inserts (it checks inputs, computes nothing) and reads
    of parameters and buffers nothing uses (an unused buffer would otherwise look like a prunable group)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)
        elif node.op == "get_attr" and not node.users:  # ep.module() reads every parameter and buffer, used or not
            gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()
    gm.recompile()


def export_graph(model: torch.nn.Module, args, kwargs: dict | None = None) -> fx.GraphModule:
    """Export an eval-mode copy of `model` to Core ATen and record every node's value on the example inputs.

    `args` is a tuple (a single tensor is accepted); `kwargs` the keyword arguments of forward().
    """
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    args = (args,) if isinstance(args, torch.Tensor) else tuple(args)
    kwargs = dict(kwargs or {})
    copy = clone_module(model).eval()
    name = type(model).__name__
    try:
        ep = torch.export.export(copy, args, kwargs, strict=False)
    except Exception as exc:  # torch.export raises many types; all mean "cannot export"
        raise TraceError(
            f"torch.export cannot export {name}: {type(exc).__name__}: {_first_line(exc)}. "
            "Fix: check that forward() runs on the example inputs, or use the fx frontend."
        ) from exc
    return exported_graph(ep, args, kwargs, name)


def exported_graph(ep: torch.export.ExportedProgram, args, kwargs: dict | None = None, name: str = "Exported") -> fx.GraphModule:
    """An ExportedProgram (the caller's, or one export_graph made) decomposed to Core ATen, with values recorded.

    The caller's program is not modified (run_decompositions returns a new one).
    """
    args = (args,) if isinstance(args, torch.Tensor) else tuple(args)
    kwargs = dict(kwargs or {})
    try:
        unlifted = ep.run_decompositions(decomposition_table()).module()
    except Exception as exc:
        raise TraceError(f"cannot decompose the exported program of {name}: {type(exc).__name__}: "
                         f"{_first_line(exc)}") from exc
    gm = fx.GraphModule(unlifted, unlifted.graph, name)  # a plain GraphModule: the unlifted one refuses eval()
    _drop_guards(gm)
    gm.eval()
    record_values(gm, flat_inputs(gm, args, kwargs))
    return gm
