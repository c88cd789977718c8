"""Export a (pruned) model to ONNX and to a reloadable PyTorch artifact, with parity checks.

Protocol of :func:`export_onnx`:

1. Run the model in eval mode under ``torch.no_grad()`` on the example inputs: the reference.
2. Export an ATen GraphModule (the export frontend's graphs) with the dynamo exporter first and any
   other model with the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) at the
   requested opset, grad enabled and float example inputs marked ``requires_grad``.
   Grad keeps ``nn.MultiheadAttention`` off its fused inference fast path
   (``aten::_native_multi_head_attention`` has no ONNX rule), even when the model's
   parameters are frozen. If the first exporter raises, the other is tried; the dynamo exporter
   (``torch.export`` based) runs at ``max(opset, 18)`` (the lowest opset it
   implements); :class:`ExportResult` reports the opset actually written.
3. ``onnx.checker.check_model(full_check=True)`` on the file.
4. Run the file in ONNX Runtime (CPUExecutionProvider) on the example inputs (and, with
   ``dynamic_batch``, on a batch one larger) and compare every output with PyTorch:
   ``max |ort - torch| <= atol + rtol * max |torch|`` per output: float32 rounding in a
   long sum grows with the size of the terms, not of the result, so an output element
   near zero in a tensor of large values is judged on the tensor's scale.

The file is written to a temporary file in the destination directory and moved into
place with ``os.replace`` only once every check has passed: on failure the destination is
neither created nor modified, and no temporary file remains. The caller's model is never
modified: the train/eval flag of every submodule is restored afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from graphprune.errors import ExportError
from graphprune.frontends import export_program
from graphprune.kvcache import cache_off
from graphprune.modes import evaluating
from graphprune.rules.moe import without_grouped_mm

__all__ = ["ExportResult", "export_onnx", "save_torch_artifact",
           # helpers shared with graphprune.runtimes and graphprune.quantize
           "as_input_tuple", "flatten_outputs", "temp_path_for", "first_line", "compare_outputs"]

MIN_OPSET = 17
PARITY_ATOL = 1e-4  # export_onnx's default absolute tolerance of ONNX Runtime against PyTorch


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote.

    ``opset`` is the default-domain opset actually in the file, ``max_abs_diff`` the largest
    absolute difference between ONNX Runtime and PyTorch over all outputs, ``exporter`` is
    ``"torchscript"`` or ``"dynamo"``, ``largest_output`` the largest absolute value of PyTorch's
    outputs: where it is below the tolerance, parity holds whatever the file computes.
    """

    path: str
    opset: int
    max_abs_diff: float
    file_bytes: int
    exporter: str = "torchscript"
    largest_output: float = float("nan")


# ----------------------------------------------------------------------------- helpers (shared)


def as_input_tuple(example_inputs: Any, where: str) -> tuple[torch.Tensor, ...]:
    """Accept one tensor or a tuple/list of tensors; anything else is an ExportError."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        return tuple(example_inputs)
    raise ExportError(
        f"{where}: example_inputs must be a tensor or a non-empty tuple of tensors, "
        f"got {type(example_inputs).__name__}; pass e.g. (torch.randn(1, 3, 224, 224),)"
    )


def flatten_outputs(out: Any, where: str) -> list[torch.Tensor]:
    """Flatten a tensor / nested tuple, list or dict of tensors in ONNX output order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flatten_outputs(o, where)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flatten_outputs(o, where)]
    raise ExportError(
        f"{where}: the model returned a {type(out).__name__}; only tensors and (nested) "
        "tuples, lists or dicts of tensors can be exported. Return tensors from forward()."
    )


@contextlib.contextmanager
def temp_path_for(path: str, suffix: str) -> Iterator[str]:
    """A temporary file name next to ``path``; removed on exit unless it was moved away."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ExportError(
            f"{path}: directory {directory!r} does not exist; create it first (os.makedirs)"
        )
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}", dir=directory
    )
    os.close(fd)
    try:
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def first_line(exc: BaseException, limit: int = 300) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def compare_outputs(
    got: Sequence[np.ndarray], want: Sequence[torch.Tensor], names: Sequence[str],
    atol: float, rtol: float, where: str, runtime: str = "ONNX Runtime",
) -> float:
    """Max abs diff over all outputs; ExportError if any output has
    ``max |got - want| > atol + rtol * max |want|``. ``runtime`` names the runtime in messages."""
    if len(got) != len(want):
        raise ExportError(
            f"{where}: {runtime} returned {len(got)} outputs, PyTorch {len(want)}; "
            "the exported graph does not match the model (check forward() for Python side effects)"
        )
    worst = 0.0
    for name, g, w in zip(names, got, want):
        w_np = w.detach().cpu().numpy()
        if tuple(g.shape) != tuple(w_np.shape):
            raise ExportError(
                f"{where}: output {name!r} has shape {tuple(g.shape)} in {runtime} but "
                f"{tuple(w_np.shape)} in PyTorch; a shape was baked into the trace "
                "(use dynamic_batch=True or avoid Python ints derived from tensor sizes)"
            )
        if w_np.size == 0:
            continue
        g64, w64 = g.astype(np.float64), w_np.astype(np.float64)
        diff = np.abs(g64 - w64)
        both_nan = np.isnan(g64) & np.isnan(w64)
        diff = np.where(both_nan, 0.0, diff)
        max_diff = float(np.nanmax(np.where(np.isnan(diff), np.inf, diff)))
        worst = max(worst, max_diff)
        scale = float(np.nanmax(np.abs(w64))) if np.isfinite(w64).any() else 0.0
        if not max_diff <= atol + rtol * scale:
            raise ExportError(
                f"{where}: {runtime} output {name!r} differs from PyTorch: max abs diff "
                f"{max_diff:.3g} > atol {atol:g} + rtol {rtol:g} * max|ref| ({scale:.3g}). The exported graph "
                "computes something else than the model (data-dependent control flow, Python "
                "state, or an op exported with different numerics); fix the model or, if the "
                "difference is acceptable, pass a larger atol/rtol"
            )
    return worst


def _ort_run(path: str, input_names: Sequence[str], inputs: Sequence[torch.Tensor],
             where: str) -> tuple[list[np.ndarray], list[str]]:
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception classes
        raise ExportError(
            f"{where}: ONNX Runtime cannot load the exported model: {first_line(exc)}. "
            "An op was exported that ORT's CPU provider does not implement at this opset; "
            "try another opset"
        ) from exc
    feeds_all = {n: t.detach().cpu().numpy() for n, t in zip(input_names, inputs)}
    # The exporter drops inputs that the graph does not use; feed only the ones it kept.
    feeds = {i.name: feeds_all[i.name] for i in sess.get_inputs() if i.name in feeds_all}
    try:
        out = sess.run(None, feeds)
    except Exception as exc:
        raise ExportError(
            f"{where}: ONNX Runtime failed to run the exported model: {first_line(exc)}"
        ) from exc
    return out, [o.name for o in sess.get_outputs()]


def _grad_inputs(inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Detached copies; floating ones require grad so MHA avoids its fused fast path."""
    return tuple(
        t.detach().requires_grad_(True) if t.is_floating_point() else t.detach() for t in inputs
    )


@contextlib.contextmanager
def _native_output_discarded() -> Iterator[None]:
    """Within: what native code writes to file descriptors 1 and 2 is discarded. When an op has no translation,
    the TorchScript exporter's C++ logger prints its whole IR graph to std::cout (hundreds of lines for a Hugging
    Face decoder), although the dynamo exporter tried next may succeed; the failure itself is still raised.
    std::cout writes through C's stdio buffer, so it is flushed on the way in (earlier output is kept) and on the
    way out (the dump goes to the null device). Where C's stdio cannot be reached, nothing is redirected."""
    try:
        libc = ctypes.CDLL(None)
        saved = [os.dup(fd) for fd in (1, 2)]
    except (OSError, AttributeError):
        yield
        return
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    libc.fflush(None)
    try:
        with open(os.devnull, "wb") as sink:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
        yield
    finally:
        libc.fflush(None)
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def _export_torchscript(model, inputs, tmp, opset, in_names, out_names, dynamic_batch) -> None:
    dynamic_axes = (
        {n: {0: "batch"} for n in [*in_names, *out_names]} if dynamic_batch else None
    )
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _native_output_discarded():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation / tracer warnings
        with torch.enable_grad():
            torch.onnx.export(
                model, _grad_inputs(inputs), tmp, dynamo=False, opset_version=opset,
                input_names=list(in_names), output_names=list(out_names),
                dynamic_axes=dynamic_axes, do_constant_folding=True,
            )


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Within: logger `name` passes errors only (the dynamo exporter logs a line per optional op library
    it skips, e.g. torchvision's, and per failed constant-folding attempt); its level is restored after."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _exportable(model: torch.nn.Module) -> torch.nn.Module:
    """For a Core ATen graph: the same graph (its tensors shared) as the dynamo exporter translates it.

    - every aten.copy(dst, src) reads expand_as(src, dst): the exporter writes a copy from a smaller src (a scalar
      written into a slice: torchvision Swin's shift mask) as an Identity of src, whose shape fails onnx.checker;
    - every view or reshape of a permuted tensor reads a contiguous copy of it (an Identity in ONNX): a view traced
      on the memory layout one kernel returned fails on the layout the exporter's kernel returns (CPU attention's
      output is (b, L, heads, d) in memory, so T5's `.transpose(1, 2).reshape(b, L, -1)` was traced as a view)."""
    A = torch.ops.aten
    reshapes, permutes = (A.view.default, A.reshape.default), (A.permute.default, A.transpose.int)
    copies = [n for n in model.graph.nodes if n.target is A.copy.default or n.target in reshapes and isinstance(
        n.args[0], torch.fx.Node) and n.args[0].target in permutes] if isinstance(model, torch.fx.GraphModule) else []
    if not copies:
        return model
    gm = torch.fx.GraphModule(model, copy.deepcopy(model.graph))
    for node in [n for n in gm.graph.nodes if n.name in {c.name for c in copies}]:
        with gm.graph.inserting_before(node):
            if node.target is A.copy.default:
                src = gm.graph.call_function(A.expand_as.default, (node.args[1], node.args[0]))
                node.args = (node.args[0], src, *node.args[2:])
            else:
                dense = gm.graph.call_function(A.clone.default, (node.args[0],),
                                               {"memory_format": torch.contiguous_format})
                node.args = (dense, *node.args[1:])
    gm.recompile()
    return gm


def _export_dynamo(model, inputs, tmp, opset, in_names, out_names, dynamic_batch) -> None:
    dynamic_shapes = (
        tuple({0: torch.export.Dim.DYNAMIC} for _ in inputs) if dynamic_batch else None
    )
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_logger("torch.onnx"), \
            _quiet_logger("onnxscript"), _quiet_logger("onnx_ir"):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _exportable(model), tuple(t.detach() for t in inputs), tmp, dynamo=True,
            # Its lowest implemented opset is 18; asking for 17 triggers a down-conversion
            # that fails on common graphs (ReduceMean axes), so ask for >= 18 directly.
            opset_version=max(opset, 18),
            input_names=list(in_names), output_names=list(out_names),
            dynamic_shapes=dynamic_shapes, external_data=False, verbose=False,
        )


def _export_via_graph(model, inputs, tmp, opset, in_names, out_names, dynamic_batch) -> None:
    """An eager model through its torch.export graph with the grouped products in plain ops (`without_grouped_mm`):
    the dynamo exporter has no translation of transformers' grouped_mm_fallback (the experts of its MoE models)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's, and the deprecated LeafSpec of its specs when copied
        graph = without_grouped_mm(torch.export.export(model, tuple(inputs), strict=False).module())
    _export_dynamo(graph, inputs, tmp, opset, in_names, out_names, dynamic_batch)


def _batch_plus_one(inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The example batch with its first sample appended (checks that batch is not baked in)."""
    return tuple(torch.cat([t, t[:1]], dim=0) for t in inputs)


# ----------------------------------------------------------------------------- public API


def export_onnx(
    model: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    opset: int = 17,
    dynamic_batch: bool = False,
    atol: float = PARITY_ATOL,
    rtol: float = 1e-3,
) -> ExportResult:
    """Export ``model`` (nn.Module or fx.GraphModule) to ONNX at ``path``, checked and verified.

    Inputs are named ``input_0, input_1, ...`` and outputs ``output_0, ...`` (tuple/dict
    outputs flattened in order). ``dynamic_batch=True`` makes dim 0 of every input and
    output symbolic and also verifies parity at batch size + 1. Raises ExportError on
    any failure; the destination is then left untouched. See the module docstring.
    """
    path = os.fspath(path)
    where = f"export_onnx({type(model).__name__} -> {path})"
    inputs = _checked_onnx_arguments(model, example_inputs, opset, dynamic_batch, atol, rtol, where)
    with evaluating(model), cache_off(model):  # a Hugging Face decoder exports its logits, not its KV cache
        reference, reference_b1 = _reference_outputs(model, inputs, dynamic_batch, where)
        in_names = [f"input_{i}" for i in range(len(inputs))]
        out_names = [f"output_{i}" for i in range(len(reference))]
        with temp_path_for(path, ".onnx") as tmp:
            exporter = _write_onnx(model, inputs, tmp, opset, in_names, out_names, dynamic_batch, where)
            actual_opset = _checked_opset(tmp, opset, where)
            got, names = _ort_run(tmp, in_names, inputs, where)
            max_diff = compare_outputs(got, reference, names, atol, rtol, where)
            if reference_b1 is not None:
                got, names = _ort_run(tmp, in_names, _batch_plus_one(inputs), where + " [batch+1]")
                max_diff = max(max_diff, compare_outputs(got, reference_b1, names, atol, rtol, where + " [batch+1]"))
            os.replace(tmp, path)
    largest = max((float(t.detach().abs().max()) for t in reference if t.numel()), default=0.0)
    return ExportResult(path=path, opset=actual_opset, max_abs_diff=max_diff, file_bytes=os.path.getsize(path),
                        exporter=exporter, largest_output=largest)


def _checked_onnx_arguments(model, example_inputs, opset, dynamic_batch, atol, rtol, where) -> tuple:
    """export_onnx's arguments, checked (an ExportError naming the bad one); returns the inputs as a tuple."""
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ExportError(f"{where}: opset {opset!r} is too old; use opset >= {MIN_OPSET}")
    if atol < 0 or rtol < 0:
        raise ExportError(f"{where}: atol and rtol must be >= 0, got atol={atol}, rtol={rtol}")
    inputs = as_input_tuple(example_inputs, where)
    if dynamic_batch and any(t.dim() == 0 for t in inputs):
        raise ExportError(f"{where}: dynamic_batch=True needs every input to have a batch dim 0")
    return inputs


def _reference_outputs(model, inputs: tuple, dynamic_batch: bool, where: str) -> tuple[list, list | None]:
    """The model's flattened outputs on the inputs (and at batch + 1 with a dynamic batch): what ORT must match."""
    try:
        with torch.no_grad():
            reference = flatten_outputs(model(*inputs), where)
            reference_b1 = flatten_outputs(model(*_batch_plus_one(inputs)), where) if dynamic_batch else None
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"{where}: the model raised on the example inputs: {type(exc).__name__}: "
                          f"{first_line(exc)}; check the example input shapes and dtypes") from exc
    return reference, reference_b1


def _is_aten_graph(model: torch.nn.Module) -> bool:
    """True for a GraphModule of ATen operators (the export frontend's graphs): the dynamo exporter's input."""
    return isinstance(model, torch.fx.GraphModule) and any(
        isinstance(n.target, torch._ops.OpOverload) for n in model.graph.nodes if n.op == "call_function")


def _write_onnx(model, inputs, tmp, opset, in_names, out_names, dynamic_batch, where) -> str:
    """Export with the exporter made for the model, else the other; returns which wrote `tmp`. An ATen graph
    goes to the dynamo exporter first (it translates ATen ops; the TorchScript one re-traces them), any other
    model to the TorchScript exporter first (it keeps the opset asked for)."""
    errors = []
    model = without_grouped_mm(model)  # mixture-of-experts products in plain ops (ONNX has no grouped product)
    exporters = (("torchscript", _export_torchscript), ("dynamo", _export_dynamo))
    exporters = exporters[::-1] if _is_aten_graph(model) else exporters
    if not isinstance(model, torch.fx.GraphModule):
        exporters += (("dynamo", _export_via_graph),)
    for name, fn in exporters:
        try:
            fn(model, inputs, tmp, opset, in_names, out_names, dynamic_batch)
            return name
        except Exception as exc:
            errors.append(f"{name} exporter: {type(exc).__name__}: {first_line(exc)}")
    raise ExportError(f"{where}: the model cannot be exported to ONNX opset {opset} ({'; '.join(errors)}). An op has "
                      "no ONNX translation: replace it, or register a custom symbolic / translation for it")


def _checked_opset(tmp: str, opset: int, where: str) -> int:
    """The file passes onnx.checker (full check); returns the ai.onnx opset it declares."""
    import onnx

    try:
        onnx.checker.check_model(tmp, full_check=True)
    except Exception as exc:
        raise ExportError(f"{where}: the exported file fails onnx.checker ({first_line(exc)}); "
                          f"this is an exporter bug at opset {opset}, try another opset") from exc
    proto = onnx.load(tmp, load_external_data=False)
    return int(next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset))


def save_torch_artifact(
    model: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike,
) -> str:
    """Save ``model`` so that it reloads without graphprune; return the format written.

    First ``torch.export`` + ``torch.export.save`` (returns ``"pt2"``; reload with
    ``torch.export.load(path).module()``), its batch dim dynamic where the model takes any batch
    (``frontends.export_program``, as ``PruneResult.exported``). If that fails or the reloaded program does not
    match the model (atol 1e-5, rtol 1e-4), ``torch.jit.trace`` + ``torch.jit.save``
    (returns ``"torchscript"``; reload with ``torch.jit.load(path)``). The model is saved
    in eval mode; the caller's model is not modified. Atomic like :func:`export_onnx`.
    Name the file ``*.pt2`` (``torch.export.load`` expects it).
    """
    path = os.fspath(path)
    where = f"save_torch_artifact({type(model).__name__} -> {path})"
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = as_input_tuple(example_inputs, where)
    with evaluating(model), cache_off(model):  # as export_onnx: a Hugging Face decoder saves its logits
        reference, _ = _reference_outputs(model, inputs, False, where)

        def check(reloaded: Any, fmt: str) -> None:
            with torch.no_grad():
                got = flatten_outputs(reloaded(*inputs), where)
            compare_outputs([g.detach().cpu().numpy() for g in got], reference,
                            [f"output_{i}" for i in range(len(got))], 1e-5, 1e-4, f"{where} [{fmt}]",
                            runtime=f"the reloaded {fmt} file")

        errors = []
        writers = (("pt2", ".pt2", _save_pt2, "torch.export"), ("torchscript", ".pt", _save_torchscript, "torch.jit.trace"))
        for fmt, suffix, write, tool in writers:
            with temp_path_for(path, suffix) as tmp:
                try:
                    check(write(model, inputs, tmp), fmt)
                    os.replace(tmp, path)
                    return fmt
                except Exception as exc:
                    errors.append(f"{tool}: {type(exc).__name__}: {first_line(exc)}")
    raise ExportError(
        f"{where}: the model cannot be saved as a standalone artifact ({'; '.join(errors)}). "
        "Make forward() traceable (no data-dependent Python control flow or side effects)"
    )


def _save_pt2(model: torch.nn.Module, inputs: tuple, tmp: str):
    """torch.export (the batch dim dynamic where the model takes any batch: frontends.export_program) + save to
    `tmp`; returns the program reloaded from it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(export_program(model, inputs)[0], tmp)
        return torch.export.load(tmp).module()


def _save_torchscript(model: torch.nn.Module, inputs: tuple, tmp: str):
    """torch.jit.trace + save to `tmp`; returns the module reloaded from it."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, inputs), tmp)
    return torch.jit.load(tmp)
