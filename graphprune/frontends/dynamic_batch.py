"""A symbolic batch dim for torch.export: dim 0 of every tensor input exported as `Dim.AUTO`.

torch specialises size-1 dims; its backed size-oblivious mode (`dynamic_attempt`) keeps even a
batch of 1 symbolic, except where an op's own stride checks decide on it. A program is trusted
with any batch size only when (`why_batch_static`) dim 0 of each user input is symbolic and its
range is [<= lowest, oo) (the model's code constrains no batch size), and (`mismatch`) it
gives the model's outputs on the example and at another batch size: a graph traced on one
batch size may bake it, or take a branch the model takes only on others. Anything else is a
static capture, with the reason.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable

import torch
import torch.fx.experimental._config as fx_config
from torch.utils._pytree import tree_leaves, tree_map

from ..batch import batch_size
from ..errors import first_line


@contextlib.contextmanager
def dynamic_attempt():
    """torch's backed size-oblivious mode (where torch has it), with FakeTensor's error log silenced: a
    failed attempt falls back to the static capture quietly."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with (fx_config.patch(backed_size_oblivious=True) if hasattr(fx_config, "backed_size_oblivious")
              else contextlib.nullcontext()):
            yield
    finally:
        log.setLevel(level)


def export_dynamic(module: torch.nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    """`module` exported on `(args, kwargs)` with dim 0 of every tensor input with a dim `Dim.AUTO`."""
    shapes = torch.export.ShapesCollection()
    for leaf in tree_leaves((args, kwargs)):
        if isinstance(leaf, torch.Tensor) and leaf.ndim > 0:
            shapes[leaf] = {0: torch.export.Dim.AUTO}
    with dynamic_attempt():
        return torch.export.export(module, args, kwargs, dynamic_shapes=shapes.dynamic_shapes(module, args, kwargs),
                                   strict=False)


def why_batch_static(ep: torch.export.ExportedProgram, lowest: int = 1) -> str:
    """Why `ep` does not take any batch size ("" when it does): dim 0 of a user input is a constant, or its
    symbols are limited to a range other than [<= lowest, oo)."""
    user_inputs = set(ep.graph_signature.user_inputs)
    for node in ep.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" and node.name in user_inputs else None
        if not isinstance(value, torch.Tensor) or value.ndim == 0:
            continue
        dim0 = value.shape[0]
        if not isinstance(dim0, torch.SymInt):
            return f"dim 0 of input `{node.name}` is fixed to {dim0}"
        for symbol in dim0.node.expr.free_symbols:
            limits = ep.range_constraints.get(symbol)
            if limits is not None and (limits.lower > lowest or not math.isinf(float(limits.upper))):
                return f"dim 0 of input `{node.name}` is limited to [{limits.lower}, {limits.upper}]"
    return ""


def doubled(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The example twice along dim 0 (a batch of 1 becomes 2)."""
    return tree_map(lambda v: torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.ndim > 0 else v, (args, kwargs))


def first_sample(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The example's first sample (dim 0 cut to 1)."""
    return tree_map(lambda v: v[:1] if isinstance(v, torch.Tensor) and v.ndim > 0 else v, (args, kwargs))


def tensors(value) -> list[torch.Tensor]:
    """The tensors among the leaves of an output (a tensor, a tuple, a Hugging Face ModelOutput...)."""
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def mismatch(got: list[torch.Tensor], ref: list[torch.Tensor], what: str, ref_name: str = "the model's") -> str:
    """How the dynamic program's outputs `got` on `what` differ from `ref` (`ref_name`); "" when they agree:
    the same tensors and shapes, values within 1e-3 of the reference's scale (a branch taken on the batch
    size differs by far more than rounding)."""
    if len(got) != len(ref) or any(g.shape != r.shape or g.dtype != r.dtype for g, r in zip(got, ref)):
        return f"the dynamic program's outputs on the {what} have other shapes than {ref_name}"
    for i, (g, r) in enumerate(zip(got, ref)):
        if r.is_floating_point() and r.numel():
            close = bool(((g - r).abs() <= 1e-3 * (1 + r.abs().max())).all())
        else:
            close = torch.equal(g, r)
        if not close:
            return f"output {i} of the dynamic program on the {what} differs from {ref_name}"
    return ""


def run_both(program: Callable, module: torch.nn.Module, args: tuple, kwargs: dict, what: str) -> str:
    """`mismatch` of `program` and `module` run on `(args, kwargs)`; a run that fails is a mismatch too."""
    try:
        with torch.no_grad():
            got, ref = tensors(program(*args, **kwargs)), tensors(module(*args, **kwargs))
    except Exception as exc:
        return f"the model or its dynamic program fails on the {what} ({type(exc).__name__}: {first_line(exc)})"
    return mismatch(got, ref, what)


def export_program(module: torch.nn.Module, args, kwargs: dict | None = None) -> tuple[torch.export.ExportedProgram, str]:
    """`module` (in the mode it is in) exported with its batch dim dynamic where it allows it, else static;
    and why it is static ("" when dynamic). Dynamic: `why_batch_static` finds nothing and the program,
    guards included, gives the module's outputs on the example and on it doubled. torch specialises a
    batch of 1 where an op's stride checks decide on it; then the batch is static. From a larger example
    the program may refuse a batch of 1 (guards), as torch.export's own. A failing static export raises
    torch's own error."""
    args = (args,) if isinstance(args, torch.Tensor) else tuple(args)
    kwargs = dict(kwargs or {})
    size = batch_size((args, kwargs))
    if size is None:
        return torch.export.export(module, args, kwargs, strict=False), "no input has a batch dim"
    try:
        ep = export_dynamic(module, args, kwargs)
        why = why_batch_static(ep, lowest=min(size, 2))
        why = f"the model's code constrains it ({why})" if why else (
            run_both(ep.module(), module, args, kwargs, "example inputs")
            or run_both(ep.module(), module, *doubled(args, kwargs), "example doubled along dim 0"))
    except Exception as exc:  # torch.export raises many types; all mean "not with a dynamic batch"
        why = f"torch.export cannot export it with a dynamic batch dim ({type(exc).__name__}: {first_line(exc)})"
    if not why:
        return ep, ""
    return torch.export.export(module, args, kwargs, strict=False), why
