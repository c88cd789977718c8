"""ExecuTorch ``.pte`` with the XNNPACK delegate, fp32 or int8, checked in the ExecuTorch runtime.

Protocol of :func:`export_executorch`:

1. Program: a ``torch.export.ExportedProgram`` is used as given; an ``nn.Module`` (or fx
   GraphModule) is exported with ``torch.export.export`` in eval mode (every submodule's
   train/eval flag is restored afterwards).
2. Reference: the program's module run in PyTorch under ``no_grad`` (fp32).
3. int8 (``quantize=batches``): the pt2e flow on a deep copy of the program's module (the caller's
   weights are never touched): ``XNNPACKQuantizer`` with the symmetric per-channel int8 config,
   ``prepare_pt2e``, every calibration batch run through the observers, ``convert_pt2e``, then
   ``torch.export`` again.
4. ``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()]).to_executorch()``.
5. The buffer is written to a temporary file next to ``path``, loaded with ``executorch.runtime``
   and run. fp32 must match the reference by export.py's rule
   (``max |a - b| <= atol + rtol * max |ref|`` per output); int8 must reach ``min_cosine`` against
   fp32 on the example inputs and the calibration batches (see :mod:`graphprune.quantize`).
6. Only then is the file moved into place (``os.replace``); on failure ``path`` is untouched.
"""
from __future__ import annotations

import copy
import operator
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from ..errors import ExportError
from ..export import as_input_tuple, compare_outputs, first_line, flatten_outputs, temp_path_for
from ..modes import evaluating
from ..quantize import agreement, calibration_batches, check_agreement, input_specs
from .optional import optional_runtime

__all__ = ["ExecuTorchResult", "ExecuTorchModel", "export_executorch"]


@dataclass(frozen=True)
class ExecuTorchResult:
    """What :func:`export_executorch` wrote.

    ``max_abs_diff`` and ``cosine`` compare the runtime's outputs with fp32 PyTorch (worst output);
    ``delegated_ops`` counts the ATen ops inside XNNPACK subgraphs, ``undelegated_ops`` names those
    left to ExecuTorch's portable kernels (slow: the benchmark should show them).
    """

    path: str
    file_bytes: int
    int8: bool
    max_abs_diff: float
    cosine: float
    delegated_ops: int
    undelegated_ops: tuple[str, ...]


class ExecuTorchModel:
    """A ``.pte`` file loaded in the ExecuTorch runtime; call it with tensors, get a list of tensors."""

    def __init__(self, path: str | os.PathLike):
        with optional_runtime("ExecuTorch"):
            import executorch.kernels.quantized  # noqa: F401  (kernels of quantized ops left outside XNNPACK)
            from executorch.runtime import Runtime
        path = os.fspath(path)
        try:
            self._method = Runtime.get().load_program(path).load_method("forward")
        except Exception as exc:
            raise ExportError(f"ExecuTorch cannot load {path}: {first_line(exc)}") from exc
        self.path = path

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        try:
            out = self._method.execute([t.contiguous() for t in inputs])
        except Exception as exc:
            raise ExportError(f"ExecuTorch failed to run {self.path}: {first_line(exc)}") from exc
        return list(out)


def _exported(model: Any, inputs: tuple[torch.Tensor, ...], where: str) -> torch.export.ExportedProgram:
    if isinstance(model, torch.export.ExportedProgram):
        return model
    if not isinstance(model, torch.nn.Module):
        raise ExportError(
            f"{where}: model must be an nn.Module or a torch.export.ExportedProgram, got {type(model).__name__}")
    try:
        with evaluating(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, inputs)
    except Exception as exc:
        raise ExportError(
            f"{where}: torch.export cannot export the model: {type(exc).__name__}: {first_line(exc)}; "
            "make forward() traceable, or pass an ExportedProgram (e.g. result.exported)") from exc


def _quantized(program: torch.export.ExportedProgram, inputs: tuple[torch.Tensor, ...],
               batches: Sequence[tuple[torch.Tensor, ...]], where: str) -> torch.export.ExportedProgram:
    """pt2e static int8 for XNNPACK: symmetric per-channel weights, calibrated on ``batches``."""
    with optional_runtime("ExecuTorch"):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            prepared = prepare_pt2e(copy.deepcopy(program.module()), quantizer)
            for batch in batches:
                prepared(*batch)
            return torch.export.export(convert_pt2e(prepared), inputs)
    except Exception as exc:
        raise ExportError(
            f"{where}: pt2e int8 quantisation failed: {type(exc).__name__}: {first_line(exc)}") from exc


def _lower(program: torch.export.ExportedProgram, where: str) -> tuple[bytes, int, tuple[str, ...]]:
    """The XNNPACK-delegated .pte bytes, the delegated op count and the names of undelegated ops."""
    with optional_runtime("ExecuTorch"):
        # registers the out variants of quantized_decomposed ops that XNNPACK leaves outside its subgraphs
        # (without it, an int8 pruned ViT fails with "Missing out variants: dequantize_per_channel")
        import executorch.kernels.quantized  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            gm = edge.exported_program().graph_module
            delegated, undelegated = 0, set()
            for node in gm.graph.nodes:
                if node.op == "get_attr" and node.target.startswith("lowered_module_"):
                    lowered = getattr(gm, node.target).original_module
                    delegated += sum(n.op == "call_function" for n in lowered.graph.nodes)
                elif node.op == "call_function" and node.target is not operator.getitem \
                        and "executorch_call_delegate" not in str(node.target):
                    # EdgeOpOverload.__name__ is short ("aten.mean.dim"); str() adds the schema
                    undelegated.add(getattr(node.target, "__name__", str(node.target)))
            return edge.to_executorch().buffer, delegated, tuple(sorted(undelegated))
    except Exception as exc:
        raise ExportError(
            f"{where}: lowering to ExecuTorch/XNNPACK failed: {type(exc).__name__}: {first_line(exc)}") from exc


def _run_all(fn: Any, batches: Sequence[tuple[torch.Tensor, ...]], where: str) -> list[list[Any]]:
    with torch.no_grad():
        return [[t.detach().cpu().numpy() for t in flatten_outputs(fn(*b), where)] for b in batches]


def export_executorch(
    model: torch.nn.Module | torch.export.ExportedProgram,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    quantize: Iterable[Any] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    min_cosine: float = 0.99,
) -> ExecuTorchResult:
    """Write an XNNPACK-delegated ``.pte`` of ``model`` at ``path``, checked in the ExecuTorch runtime.

    ``quantize``: None for fp32, or calibration batches (shaped like ``example_inputs``) for int8.
    See the module docstring for the protocol and checks; raises ExportError (CalibrationError for
    bad batches, MissingRuntimeError without ExecuTorch) and then leaves ``path`` untouched.
    """
    path = os.fspath(path)
    where = f"export_executorch({type(model).__name__} -> {path})"
    with optional_runtime("ExecuTorch"):
        import executorch.runtime  # noqa: F401  (fail before any work when the runtime is missing)
    inputs = as_input_tuple(example_inputs, where)
    batches = None if quantize is None else calibration_batches(quantize, input_specs(inputs), where)
    program = _exported(model, inputs, where)
    checked = [inputs, *(batches or [])]
    try:
        reference = _run_all(program.module(), checked, where)
    except Exception as exc:
        raise ExportError(f"{where}: the program raised on the example inputs: {first_line(exc)}") from exc
    if batches is not None:
        program = _quantized(program, inputs, batches, where)
    buffer, delegated, undelegated = _lower(program, where)

    with temp_path_for(path, ".pte") as tmp:
        with open(tmp, "wb") as f:
            f.write(buffer)
        runner = ExecuTorchModel(tmp)
        got = [[t.numpy() for t in runner(*b)] for b in (checked if batches is not None else [inputs])]
        if batches is None:
            compare_outputs(got[0], [torch.from_numpy(r) for r in reference[0]],
                            [f"output_{i}" for i in range(len(got[0]))], atol, rtol, where, "ExecuTorch")
        agree = agreement(got, reference[:len(got)])
        if batches is not None:
            check_agreement(agree, min_cosine, where, "ExecuTorch")
        os.replace(tmp, path)
    return ExecuTorchResult(path=path, file_bytes=os.path.getsize(path), int8=batches is not None,
                            max_abs_diff=agree.max_abs_diff, cosine=agree.cosine,
                            delegated_ops=delegated, undelegated_ops=undelegated)
