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

Shapes are static except the batch dim (`_dynamic_graph`, frontends.dynamic_batch): dim 0 of
every tensor input is exported as `Dim.AUTO`, on the caller's own example (size-oblivious: a
batch of 1 stays symbolic) or, when that specialises it, on the example doubled; the graph then
holds `sym_size` nodes and runs on any batch size. It is kept only when the model's code
constrains no batch size and the graph gives the model's outputs at two batch sizes; otherwise
the capture is static and the graph's `BatchDim.static` (graphprune.batch) says why.
"""
from __future__ import annotations

import warnings

import torch
import torch.fx as fx
from torch.fx._pytree import tree_flatten_spec

from ..batch import BATCH_KEY, BatchDim, batch_size
from ..copies import clone_module
from ..errors import InputError, TraceError, first_line
from ..trace import record_values
from .dynamic_batch import (doubled, dynamic_attempt, export_dynamic, first_sample, mismatch, run_both,
                            tensors, why_batch_static)

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


def decompose(ep: torch.export.ExportedProgram, name: str = "Exported") -> torch.export.ExportedProgram:
    """`ep` decomposed to Core ATen (`decomposition_table`), a new program; size-oblivious, so a dynamic
    batch of 1 stays symbolic. A failure is a TraceError naming `name`."""
    try:
        with dynamic_attempt(), warnings.catch_warnings():
            # torch 2.13's own deep copy of the program's pytree specs warns about its deprecated LeafSpec
            warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
            return ep.run_decompositions(decomposition_table())
    except Exception as exc:
        raise TraceError(f"cannot decompose the exported program of {name}: {type(exc).__name__}: "
                         f"{first_line(exc)}") from exc


def _views_as_reshapes(gm: fx.GraphModule) -> None:
    """Every aten.view as aten.reshape: the same values (the graph is functional: nothing writes through a view).
    Decomposition writes `reshape` as `view` where the strides the real kernels returned allow it, and those may
    not be the strides a re-trace under fake tensors sees (CPU scaled_dot_product_attention returns (B, S, H, D)
    memory under a (B, H, S, D) shape, its meta function does not), so a later torch.export, ONNX or .pt2 of the
    graph would fail on the `view` after `transpose(1, 2)` (T5, Swin)."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is _A.view.default:
            node.target = _A.reshape.default


def _unguarded(ep: torch.export.ExportedProgram, name: str) -> fx.GraphModule:
    """The plain fx.GraphModule of `ep` in eval mode (the unlifted module refuses eval()), guards dropped,
    views written as reshapes."""
    unlifted = ep.module()
    gm = fx.GraphModule(unlifted, unlifted.graph, name)
    _views_as_reshapes(gm)
    _drop_guards(gm)
    return gm.eval()


def _graph_differs(gm: fx.GraphModule, model: torch.nn.Module, args: tuple, kwargs: dict, output) -> str:
    """How the dynamic graph `gm` (`output`: its recorded output on the example) fails the model; "" when it
    does not. With a batch of 1: it gives the model's output on the example (size-oblivious tracing assumes
    2 or more) and, on the example doubled, that output twice (it bakes no batch size). With more: it gives
    the model's output on the example's first sample (torch traced it assuming 2 or more)."""
    if batch_size((args, kwargs)) != 1:
        return run_both(gm, model, *first_sample(args, kwargs), "first sample of the example")
    args2, kwargs2 = doubled(args, kwargs)
    try:
        with torch.no_grad():
            ref, twice = tensors(model(*args, **kwargs)), tensors(gm(*args2, **kwargs2))
    except Exception as exc:
        return f"the model or its dynamic graph fails on the example or on it doubled ({type(exc).__name__}: " \
               f"{first_line(exc)})"
    return (mismatch(tensors(output), ref, "example inputs")
            or mismatch(twice, [torch.cat([t, t]) for t in tensors(output)], "example doubled along dim 0",
                        "its outputs on the example, twice along dim 0"))


def fresh(model: torch.nn.Module) -> torch.nn.Module:
    """New module objects over `model`'s very tensors, in eval mode: what one trace or run assigns to its modules'
    attributes stays there. `model` is graphprune's own copy, never the caller's model."""
    return clone_module(model, share_tensors=True).eval()


def _dynamic_graph(model: torch.nn.Module, args: tuple, kwargs: dict, name: str) -> tuple[fx.GraphModule | None, str]:
    """The Core ATen graph of `model` with a symbolic batch dim and values recorded, or None and why not.

    Exported on the example itself (size-oblivious), then, for a batch of 1 that stays static
    (an op's stride check specialises it, e.g. linear on a transposed input), on the example doubled.
    A graph is kept only when its inputs' dim 0 ranges over [<=2, oo) and `_graph_differs` finds
    nothing: it is checked at a batch of 1 by a run (guards dropped: that run stands for the guard
    `batch != 1` torch adds when it traces on 2 or more) and at another size. Every trace and run is
    on `fresh(model)`: a forward that caches on its modules (YOLO's Detect keeps `self.shape` and its
    anchors) would carry one trace's symbolic sizes into the next.
    """
    tries = [(args, kwargs)] + ([doubled(args, kwargs)] if batch_size((args, kwargs)) == 1 else [])
    reasons = []
    for on_args, on_kwargs in tries:
        try:
            ep = decompose(export_dynamic(fresh(model), on_args, on_kwargs), name)
            why = why_batch_static(ep, lowest=2)
            if why:
                reasons.append(f"the model's code constrains it ({why})")
                continue
            gm = _unguarded(ep, name)
            why = _graph_differs(gm, fresh(model), args, kwargs, record_values(gm, flat_inputs(gm, args, kwargs)))
            if not why:
                return gm, ""
            reasons.append(why)
        except Exception as exc:  # torch.export raises many types; all mean "not with a dynamic batch"
            reasons.append(f"torch.export cannot export it with a dynamic batch dim ({type(exc).__name__}: "
                           f"{first_line(exc)})")
    return None, reasons[0]


def export_graph(model: torch.nn.Module, args, kwargs: dict | None = None) -> fx.GraphModule:
    """Export an eval-mode copy of `model` to Core ATen (batch dim dynamic where the model allows it, see
    `_dynamic_graph`; else static, and why in its BatchDim) and record every node's value on the example.

    `args` is a tuple (a single tensor is accepted); `kwargs` the keyword arguments of forward().
    """
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    args = (args,) if isinstance(args, torch.Tensor) else tuple(args)
    kwargs = dict(kwargs or {})
    copy = clone_module(model).eval()
    name = type(model).__name__
    gm, static = _dynamic_graph(copy, args, kwargs, name) if batch_size((args, kwargs)) is not None else (None, "")
    if gm is None:
        try:
            ep = torch.export.export(fresh(copy), args, kwargs, strict=False)
        except Exception as exc:  # torch.export raises many types; all mean "cannot export"
            raise TraceError(
                f"torch.export cannot export {name}: {type(exc).__name__}: {first_line(exc)}. "
                "Fix: check that forward() runs on the example inputs, or use the fx frontend."
            ) from exc
        gm = _unguarded(decompose(ep, name), name)
        record_values(gm, flat_inputs(gm, args, kwargs))
    gm.meta[BATCH_KEY] = BatchDim(batch_size((args, kwargs)), static)
    return gm


def exported_graph(ep: torch.export.ExportedProgram, args, kwargs: dict | None = None,
                   name: str = "Exported") -> fx.GraphModule:
    """A caller's ExportedProgram decomposed to Core ATen, with values recorded (the program is not modified:
    run_decompositions returns a new one). Its batch dim is as the caller exported it."""
    args = (args,) if isinstance(args, torch.Tensor) else tuple(args)
    kwargs = dict(kwargs or {})
    why = why_batch_static(ep, lowest=batch_size((args, kwargs)) or 1)
    static = why and (f"the given ExportedProgram has it static ({why}); export the model with "
                      "dynamic_shapes marking dim 0 of its inputs torch.export.Dim.AUTO")
    gm = _unguarded(decompose(ep, name), name)
    record_values(gm, flat_inputs(gm, args, kwargs))
    gm.meta[BATCH_KEY] = BatchDim(batch_size((args, kwargs)), static)
    return gm
