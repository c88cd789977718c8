"""Does an eager module compute what a pruned graph computes? The check behind `result.module` and recovery.

`mismatch(module, gm, inputs, expected)` is None when `module`, called as the caller calls it (the graph's
placeholder values turned back into its forward's args and kwargs, `call_inputs`), returns the graph's
output tensors, shapes equal and values within TOLERANCE (torch.allclose, rtol = atol); otherwise it
says what differs, and where in the user's code a call failed (`user_frame`).
"""
from __future__ import annotations

import inspect
import os
import traceback

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from .modes import evaluating

TOLERANCE = 1e-5

_OWN = os.path.dirname(os.path.abspath(__file__))
_ZOO = os.path.join(_OWN, "models")


def is_user_code(filename: str) -> bool:
    """Not torch, not graphprune's own machinery (its zoo models count as user code)."""
    path = os.path.abspath(filename)
    return "/torch/" not in path and (not path.startswith(_OWN + os.sep) or path.startswith(_ZOO + os.sep))


def user_frame(exc: BaseException) -> str:
    """The innermost traceback frame in the user's code (see is_user_code): where a baked size broke."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if is_user_code(f.filename)]
    if not frames:
        return "unknown location"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}: `{(f.line or '').strip()}`"


def call_inputs(gm: fx.GraphModule, inputs: tuple, source: nn.Module | None = None) -> tuple[tuple, dict]:
    """The (args, kwargs) of the caller's forward that the graph's placeholder values came from: by the export
    frontend's pytree input spec; else (fx) positional, and by name from the first argument that `source`'s
    forward takes by keyword only (`forward(self, *, x, y)`)."""
    spec = getattr(gm, "_in_spec", None)  # the export frontend's pytree input spec
    if spec is not None:
        args, kwargs = tree_unflatten(list(inputs), spec)
        return tuple(args), dict(kwargs)
    try:
        keyword_only = {p.name for p in inspect.signature(source.forward).parameters.values()
                        if p.kind is inspect.Parameter.KEYWORD_ONLY} if source is not None else set()
    except (TypeError, ValueError):
        keyword_only = set()
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    args, kwargs = [], {}
    for name, value in zip(names, inputs):
        if name in keyword_only or kwargs:
            kwargs[name] = value
        else:
            args.append(value)
    return tuple(args), kwargs


def output_tensors(value) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


@torch.no_grad()
def mismatch(module: nn.Module, gm: fx.GraphModule, inputs: tuple, expected: list[torch.Tensor]) -> str | None:
    """None if `module` (eval mode) gives the pruned graph's outputs on `inputs`, else why not."""
    args, kwargs = call_inputs(gm, inputs, module)
    try:
        with evaluating(module):
            got = output_tensors(module(*args, **kwargs))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''} " \
               f"(at {user_frame(exc)})"
    if len(got) != len(expected):
        return f"it returns {len(got)} tensors, the pruned graph {len(expected)}"
    for k, (a, b) in enumerate(zip(got, expected)):
        if a.shape != b.shape:
            return f"output {k} has shape {tuple(a.shape)}, the pruned graph's {tuple(b.shape)}"
        if not torch.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE):
            return f"output {k} differs from the pruned graph's by up to {float((a - b).abs().max()):.3g}"
    return None


@torch.no_grad()
def graph_outputs(gm: fx.GraphModule, inputs: tuple) -> list[torch.Tensor]:
    with evaluating(gm):
        return output_tensors(gm(*inputs))


def differs_from_graph(module: nn.Module, gm: fx.GraphModule, inputs: tuple) -> str | None:
    """None when `module` gives the outputs of `gm` on `inputs` (the graph's placeholder values), else how not."""
    return mismatch(module, gm, inputs, graph_outputs(gm, inputs))
