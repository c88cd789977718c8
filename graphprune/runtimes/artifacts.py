"""One deployable file per (runtime, precision) of a model, each checked in its runtime before it is kept.

* ONNX Runtime fp32: :func:`graphprune.export.export_onnx` (ORT parity with PyTorch).
* ONNX Runtime int8: :func:`graphprune.quantize.quantize_onnx` of that file (QDQ, cosine vs fp32).
* OpenVINO fp32 / int8: :func:`export_openvino` of the fp32 / int8 ONNX file (IR ``.xml`` + ``.bin``).
* ExecuTorch fp32 / int8: :func:`export_executorch` (XNNPACK ``.pte``; int8 through pt2e).

The ONNX files are shared: ORT and OpenVINO read the same model. int8 needs calibration batches
(see :mod:`graphprune.quantize`); without them an int8 request is a CalibrationError.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import torch

from ..errors import CalibrationError
from ..export import export_onnx
from ..quantize import quantize_onnx
from .kinds import Precision, Runtime

__all__ = ["build_artifacts", "artifact_bytes"]


def artifact_bytes(path: str) -> int:
    """Bytes on disk of an artefact; an OpenVINO ``.xml`` counts its ``.bin`` too."""
    size = os.path.getsize(path)
    if path.endswith(".xml") and os.path.exists(path[:-4] + ".bin"):
        size += os.path.getsize(path[:-4] + ".bin")
    return size


def build_artifacts(
    model: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    directory: str | os.PathLike,
    name: str,
    runtimes: Iterable[Runtime],
    precisions: Iterable[Precision],
    *,
    calibration: Iterable[Any] | None = None,
    min_cosine: float = 0.99,
) -> dict[tuple[Runtime, Precision], str]:
    """Write ``{directory}/{name}[.int8]{suffix}`` for every runtime and precision; return their paths."""
    runtimes, precisions = tuple(runtimes), tuple(precisions)
    directory = os.fspath(directory)
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    batches = None
    if Precision.INT8 in precisions:
        if calibration is None:
            raise CalibrationError(f"int8 artefacts of {name!r} need calibration batches (calibration=[...]), "
                                   "shaped like the example inputs")
        batches = list(calibration)
    paths: dict[tuple[Runtime, Precision], str] = {}
    onnx_files: dict[Precision, str] = {}

    def onnx_file(precision: Precision) -> str:
        if precision not in onnx_files:
            fp32 = os.path.join(directory, f"{name}.onnx")
            if Precision.FP32 not in onnx_files:
                export_onnx(model, tuple(inputs), fp32)
                onnx_files[Precision.FP32] = fp32
            if precision is Precision.INT8:
                out = os.path.join(directory, f"{name}.int8.onnx")
                quantize_onnx(fp32, out, batches, min_cosine=min_cosine)
                onnx_files[precision] = out
        return onnx_files[precision]

    for runtime in runtimes:
        for precision in precisions:
            stem = os.path.join(directory, name + (".int8" if precision is Precision.INT8 else ""))
            if runtime is Runtime.ORT:
                paths[runtime, precision] = onnx_file(precision)
            elif runtime is Runtime.OPENVINO:
                from .openvino import export_openvino

                paths[runtime, precision] = export_openvino(onnx_file(precision), tuple(inputs), stem + ".xml",
                                                            min_cosine=min_cosine).xml_path
            else:
                from .executorch import export_executorch

                quantize = batches if precision is Precision.INT8 else None
                paths[runtime, precision] = export_executorch(model, tuple(inputs), stem + ".pte", quantize=quantize,
                                                              min_cosine=min_cosine).path
    return paths
