"""OpenVINO IR (``.xml`` + ``.bin``) from our ONNX, checked on the CPU plugin; a runner for ONNX or IR files.

Protocol of :func:`export_openvino`:

1. Source: an ``nn.Module`` (or ExportedProgram) is first exported with
   :func:`graphprune.export.export_onnx` into a temporary directory (which checks ONNX Runtime
   parity); its reference is PyTorch. An ONNX file's reference is ONNX Runtime on the same file.
2. ``openvino.convert_model`` then ``openvino.save_model(..., compress_to_fp16=False)``:
   save_model's default stores the weights in fp16, which is not the fp32 model.
3. The IR is compiled on the CPU plugin with the inference precision pinned to f32 (on CPUs with
   AVX512-BF16 or AMX the plugin's default is bf16: on a pruned ResNet-18 here 4.7 ms instead of
   22.6 ms, but a max abs diff of 1e-3 instead of 1e-7), run on the example inputs and compared:
   an fp32 file by export.py's rule (``max |a - b| <= atol + rtol * max |ref|`` per output); a
   quantised (QDQ) file by cosine similarity >= ``min_cosine`` against ONNX Runtime on the same
   file, since the two runtimes' int8 kernels round differently.
4. The ``.bin`` and then the ``.xml`` are moved into place with ``os.replace`` (OpenVINO finds the
   ``.bin`` by the ``.xml``'s name; the xml does not name it). On failure neither is touched.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ExportError
from ..export import (as_input_tuple, compare_outputs, export_onnx, first_line, flatten_outputs,
                      temp_path_for)
from ..modes import evaluating
from ..quantize import agreement, check_agreement, is_quantized_onnx, onnx_inputs, ort_outputs
from .optional import optional_runtime

__all__ = ["OpenVINOResult", "OpenVINOModel", "export_openvino"]


@dataclass(frozen=True)
class OpenVINOResult:
    """What :func:`export_openvino` wrote; diffs are against PyTorch (module source) or ORT (ONNX source)."""

    xml_path: str
    bin_path: str
    file_bytes: int
    int8: bool
    max_abs_diff: float
    cosine: float


class OpenVINOModel:
    """An ONNX file or IR compiled on OpenVINO's CPU plugin; call it with tensors/arrays, get numpy outputs.

    ``exact_fp32=True`` pins the inference precision to f32; False leaves the plugin's default
    (bf16 on CPUs with AVX512-BF16/AMX: faster, not fp32). ``num_threads`` None leaves the
    plugin's default (all cores).
    """

    def __init__(self, path: str | os.PathLike, *, num_threads: int | None = None, exact_fp32: bool = True):
        with optional_runtime("OpenVINO"):
            import openvino as ov
            import openvino.properties as props
            import openvino.properties.hint as hints
        self.path = os.fspath(path)
        config: dict[Any, Any] = {}
        if exact_fp32:
            config[hints.inference_precision] = ov.Type.f32
        if num_threads is not None:
            config[props.inference_num_threads] = int(num_threads)
        try:
            self._compiled = ov.Core().compile_model(self.path, "CPU", config)
        except Exception as exc:  # openvino raises RuntimeError with a multi-line C++ trace
            raise ExportError(f"OpenVINO cannot compile {self.path} on the CPU plugin: {first_line(exc)}") from exc
        self._request = self._compiled.create_infer_request()

    def __call__(self, *inputs: torch.Tensor | np.ndarray) -> list[np.ndarray]:
        self.infer(*inputs)
        return [self._request.get_output_tensor(i).data.copy() for i in range(len(self._compiled.outputs))]

    def infer(self, *inputs: torch.Tensor | np.ndarray) -> None:
        """Run once and keep the outputs inside the request (no copy: what a latency timer should measure)."""
        arrays = [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in inputs]
        try:
            self._request.infer(arrays)
        except Exception as exc:
            raise ExportError(f"OpenVINO failed to run {self.path}: {first_line(exc)}") from exc


def _reference(source: Any, inputs: tuple[torch.Tensor, ...], work: str,
               where: str) -> tuple[str, list[np.ndarray], bool]:
    """The ONNX file to convert, the reference outputs, and whether the file is quantised."""
    import onnx

    if isinstance(source, torch.export.ExportedProgram):
        source = source.module()
    if isinstance(source, torch.nn.Module):
        onnx_path = os.path.join(work, "model.onnx")
        export_onnx(source, inputs, onnx_path)
        with evaluating(source), torch.no_grad():
            reference = flatten_outputs(source(*inputs), where)
        return onnx_path, [t.detach().cpu().numpy() for t in reference], False
    if not isinstance(source, (str, os.PathLike)):
        raise ExportError(f"{where}: source must be an ONNX file path or an nn.Module, got {type(source).__name__}")
    onnx_path = os.fspath(source)
    try:
        proto = onnx.load(onnx_path, load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{where}: cannot read the ONNX file: {first_line(exc)}") from exc
    names, _ = onnx_inputs(proto)
    if len(names) != len(inputs):
        raise ExportError(f"{where}: the ONNX file takes {len(names)} inputs, {len(inputs)} example inputs given")
    feeds = [dict(zip(names, (t.detach().cpu().numpy() for t in inputs)))]
    return onnx_path, ort_outputs(onnx_path, feeds, where)[0], is_quantized_onnx(proto)


def export_openvino(
    source: str | os.PathLike | torch.nn.Module | torch.export.ExportedProgram,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    xml_path: str | os.PathLike,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    min_cosine: float = 0.99,
) -> OpenVINOResult:
    """Convert ``source`` (ONNX path or module) to OpenVINO IR at ``xml_path`` (+ ``.bin``), checked on CPU.

    See the module docstring for the protocol. Raises ExportError (MissingRuntimeError without
    OpenVINO) and then leaves the destination untouched.
    """
    xml_path = os.fspath(xml_path)
    label = os.fspath(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
    where = f"export_openvino({label} -> {xml_path})"
    with optional_runtime("OpenVINO"):
        import openvino as ov
    if not xml_path.endswith(".xml"):
        raise ExportError(f"{where}: the IR path must end in .xml (OpenVINO writes the weights beside it as .bin)")
    inputs = as_input_tuple(example_inputs, where)
    bin_path = xml_path[: -len(".xml")] + ".bin"

    with tempfile.TemporaryDirectory() as work:
        onnx_path, reference, int8 = _reference(source, inputs, work, where)
        with temp_path_for(xml_path, ".xml") as tmp_xml:
            tmp_bin = tmp_xml[: -len(".xml")] + ".bin"
            try:
                try:
                    ov.save_model(ov.convert_model(onnx_path), tmp_xml, compress_to_fp16=False)
                except Exception as exc:
                    raise ExportError(f"{where}: openvino.convert_model failed: {first_line(exc)}") from exc
                got = OpenVINOModel(tmp_xml)(*inputs)
                names = [f"output_{i}" for i in range(len(got))]
                want = [torch.from_numpy(r) for r in reference]
                if not int8:
                    compare_outputs(got, want, names, atol, rtol, where, "OpenVINO")
                agree = agreement([got], [reference])
                if int8:
                    check_agreement(agree, min_cosine, where, "OpenVINO (vs ONNX Runtime on the same int8 file)")
                os.replace(tmp_bin, bin_path)
                os.replace(tmp_xml, xml_path)
            finally:
                if os.path.exists(tmp_bin):
                    os.remove(tmp_bin)
    return OpenVINOResult(xml_path=xml_path, bin_path=bin_path,
                          file_bytes=os.path.getsize(xml_path) + os.path.getsize(bin_path),
                          int8=int8, max_abs_diff=agree.max_abs_diff, cosine=agree.cosine)
