"""int8 static post-training quantisation after pruning, and how close int8 stays to fp32.

Calibration data is a non-empty sequence of batches; each batch is a tensor (one input) or a
tuple of tensors / numpy arrays with the same count, dtype and shape as the model's inputs (a
symbolic ONNX dim accepts any size). Anything else is a :class:`CalibrationError`, raised before
any expensive work. The batches are read once (a generator is fine).

int8 is not exact, so it is judged by the cosine similarity ``<a, b> / (|a| |b|)`` of each
output against fp32, each output flattened over all batches; the worst output counts and must
reach ``min_cosine``. ``max |a - b|`` is reported beside it.

:func:`quantize_onnx` writes a QDQ ONNX file for ONNX Runtime and OpenVINO (which reads the same
file) with ``onnxruntime.quantization.quantize_static``: per-channel symmetric int8 weights and
asymmetric uint8 activations (U8S8), MinMax calibration. U8S8 because x86's int8 dot-product
instructions (AVX2 ``VPMADDUBSW``, AVX512-VNNI/AVX-VNNI ``VPDPBUSD``) multiply unsigned by signed
bytes. Measured on a pruned ResNet-18, 1 thread, this machine (AVX512-VNNI, AMX): fp32 31.7 ms,
U8S8 13.9 ms, S8S8 39.4 ms in ORT 1.31; OpenVINO 2026.4 ran U8S8 in 5.6 ms and S8S8 in 26 ms
(with the default bf16 hint it cannot compile S8S8 at all). ``quant_pre_process`` runs first: the
TorchScript exporter routes some weights through ``Identity`` nodes, which hide them from the
quantiser (those convs stay fp32 between Q/DQ pairs: 53 ms instead of 13.9 ms).
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from .errors import CalibrationError, ExportError, InputError
from .export import first_line, temp_path_for
from .targets import cpu_flags

__all__ = ["InputSpec", "input_specs", "calibration_batches", "Agreement", "agreement", "check_agreement",
           "QuantizeResult", "quantize_onnx", "is_quantized_onnx"]


# ----------------------------------------------------------------------------- calibration data


@dataclass(frozen=True)
class InputSpec:
    """What one model input must look like; ``None`` in ``shape`` accepts any size."""

    shape: tuple[int | None, ...]
    dtype: torch.dtype

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{str(self.dtype).removeprefix('torch.')}[{dims}]"


def input_specs(example_inputs: Sequence[torch.Tensor]) -> tuple[InputSpec, ...]:
    """The specs of a tuple of example inputs: every dim fixed (an exported program has static shapes)."""
    return tuple(InputSpec(tuple(t.shape), t.dtype) for t in example_inputs)


def _describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')}[{', '.join(map(str, t.shape))}]"


def _as_tensor(a: Any, where: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    raise CalibrationError(f"{where} is a {type(a).__name__}; use a torch.Tensor or a numpy array")


def calibration_batches(
    batches: Iterable[Any], specs: Sequence[InputSpec], where: str
) -> list[tuple[torch.Tensor, ...]]:
    """Check the calibration batches against the model's input specs; return them as tuples of tensors."""
    expected = ", ".join(s.describe() for s in specs)
    hint = f"each batch must be {'a tensor' if len(specs) == 1 else 'a tuple of tensors'} {expected}"
    if isinstance(batches, (torch.Tensor, np.ndarray)):
        raise CalibrationError(
            f"{where}: calibration data is one tensor; pass a list of batches, e.g. [x1, x2, ...]; {hint}")
    try:
        items = list(batches)
    except TypeError:
        raise CalibrationError(
            f"{where}: calibration data must be a list (or iterable) of batches, got "
            f"{type(batches).__name__}; {hint}") from None
    if not items:
        raise CalibrationError(
            f"{where}: no calibration batches; pass a few representative batches (8-32 is typical); {hint}")
    out = []
    for i, batch in enumerate(items):
        arrays = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        if len(arrays) != len(specs):
            raise CalibrationError(
                f"{where}: calibration batch {i} has {len(arrays)} inputs, the model takes {len(specs)}; {hint}")
        tensors = tuple(_as_tensor(a, f"{where}: calibration batch {i}, input {j},")
                        for j, a in enumerate(arrays))
        for j, (t, spec) in enumerate(zip(tensors, specs)):
            fits = t.dtype == spec.dtype and t.dim() == len(spec.shape) and all(
                want is None or want == got for want, got in zip(spec.shape, t.shape))
            if not fits:
                raise CalibrationError(
                    f"{where}: calibration batch {i}, input {j} is {_describe(t)} but the model's input {j} "
                    f"is {spec.describe()}; calibrate with batches shaped like the example inputs ({hint})")
        out.append(tensors)
    return out


# ----------------------------------------------------------------------------- int8 vs fp32


@dataclass(frozen=True)
class Agreement:
    """How close one runtime's outputs are to a reference: worst-output cosine similarity and max abs diff."""

    cosine: float
    max_abs_diff: float


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """<a, b> / (|a| |b|) in float64; 1 when both are zero, 0 when only one is, NaN stays NaN."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def agreement(got_runs: Sequence[Sequence[np.ndarray]], want_runs: Sequence[Sequence[np.ndarray]]) -> Agreement:
    """Compare runs (one list of outputs per batch): each output is concatenated over the runs."""
    n_out = len(want_runs[0])
    if any(len(run) != n_out for run in got_runs):
        raise ExportError(f"the runtime returned {len(got_runs[0])} outputs, the reference {n_out}; "
                          "the exported graph does not match the model")
    cosines, diffs = [], []
    for k in range(n_out):
        got = np.concatenate([np.asarray(run[k]).ravel() for run in got_runs])
        want = np.concatenate([np.asarray(run[k]).ravel() for run in want_runs])
        cosines.append(_cosine(got, want))
        diffs.append(float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0)
    # NaN compares False everywhere: min() must not hide it.
    cosine = float("nan") if any(np.isnan(c) for c in cosines) else min(cosines)
    return Agreement(cosine=cosine, max_abs_diff=max(diffs))


def check_agreement(a: Agreement, min_cosine: float, where: str, runtime: str) -> None:
    """ExportError unless the worst output's cosine similarity reaches ``min_cosine``."""
    if not a.cosine >= min_cosine:
        raise ExportError(
            f"{where}: int8 outputs in {runtime} are too far from fp32: cosine similarity {a.cosine:.4f} < "
            f"{min_cosine} (max abs diff {a.max_abs_diff:.3g}). Calibrate with more representative batches, "
            "keep the sensitive layers in fp32, or pass a lower min_cosine if this is acceptable")


# ----------------------------------------------------------------------------- ONNX QDQ


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_onnx` wrote and how close it stays to the fp32 file on the calibration batches."""

    path: str
    file_bytes: int
    fp32_bytes: int
    cosine: float
    max_abs_diff: float
    batches: int
    preprocessed: bool


_QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                            "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"})


def is_quantized_onnx(proto: Any) -> bool:
    """True if the ONNX model holds quantisation ops (its numerics are int8, not fp32)."""
    return any(node.op_type in _QUANTIZED_OPS for node in proto.graph.node)


def onnx_inputs(proto: Any) -> tuple[list[str], tuple[InputSpec, ...]]:
    """Names and specs of the graph inputs (initializers excluded); symbolic dims become ``None``."""
    from onnx.helper import tensor_dtype_to_np_dtype

    inits = {i.name for i in proto.graph.initializer}
    names, specs = [], []
    for value in proto.graph.input:
        if value.name in inits:
            continue
        ttype = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim)
        dtype = torch.from_numpy(np.zeros(0, tensor_dtype_to_np_dtype(ttype.elem_type))).dtype
        names.append(value.name)
        specs.append(InputSpec(shape, dtype))
    return names, tuple(specs)


def ort_outputs(path: str, feeds: Sequence[Mapping[str, np.ndarray]], where: str) -> list[list[np.ndarray]]:
    """Run ``path`` in ONNX Runtime (CPU) once per feed dict."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return [session.run(None, dict(feed)) for feed in feeds]
    except Exception as exc:  # onnxruntime raises its own exception classes
        raise ExportError(f"{where}: ONNX Runtime cannot run {path}: {first_line(exc)}") from exc


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self) -> Mapping[str, np.ndarray] | None:
        return next(self._it, None)


def _preprocess(src: str, dst: str) -> bool:
    """ORT's pre-quantisation pass (shape inference + graph cleanup); False if it cannot handle the model."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(src, dst)
        return True
    except Exception:  # the file is still quantisable without it, only less of it
        return False


def reduce_range() -> bool:
    """7-bit weights where this CPU multiplies u8 x s8 without VNNI (AVX2, AVX-512 without VNNI): there ONNX
    Runtime's int8 kernels add pairs of products in 16 bits, which saturate with 8-bit weights (ONNX
    Runtime's quantization guide recommends reduce_range there)."""
    flags = cpu_flags()
    return flags is not None and "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def quantize_onnx(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration: Iterable[Any],
    *,
    min_cosine: float = 0.99,
) -> QuantizeResult:
    """Quantise an fp32 ONNX file (e.g. from :func:`graphprune.export.export_onnx`) to QDQ int8.

    ``calibration`` holds one array per ONNX graph input, in order, per batch. The int8 file is
    run in ONNX Runtime on every calibration batch beside the fp32 file and must reach
    ``min_cosine`` (see the module docstring); it is written atomically to ``out_path`` only then.
    """
    onnx_path, out_path = os.fspath(onnx_path), os.fspath(out_path)
    where = f"quantize_onnx({onnx_path} -> {out_path})"
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if not 0.0 <= min_cosine <= 1.0:
        raise InputError(f"{where}: min_cosine must be in [0, 1], got {min_cosine}")
    try:
        proto = onnx.load(onnx_path, load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{where}: cannot read the ONNX file: {first_line(exc)}; "
                          "pass a file written by graphprune.export.export_onnx") from exc
    if is_quantized_onnx(proto):
        raise ExportError(f"{where}: the file is already quantised; pass the fp32 ONNX file")
    names, specs = onnx_inputs(proto)
    batches = calibration_batches(calibration, specs, where)
    feeds = [{n: t.numpy() for n, t in zip(names, b)} for b in batches]

    with tempfile.TemporaryDirectory() as work, temp_path_for(out_path, ".onnx") as tmp:
        pre = os.path.join(work, "preprocessed.onnx")
        preprocessed = _preprocess(onnx_path, pre)
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # quantize_static logs advice on the root logger
        try:
            quantize_static(pre if preprocessed else onnx_path, tmp, _Feeds(feeds),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range(),
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        except Exception as exc:
            raise ExportError(f"{where}: onnxruntime's quantize_static failed: {first_line(exc)}") from exc
        finally:
            logging.getLogger().setLevel(quiet)
        agree = agreement(ort_outputs(tmp, feeds, where), ort_outputs(onnx_path, feeds, where))
        check_agreement(agree, min_cosine, where, "ONNX Runtime")
        os.replace(tmp, out_path)
    return QuantizeResult(path=out_path, file_bytes=os.path.getsize(out_path),
                          fp32_bytes=os.path.getsize(onnx_path), cosine=agree.cosine,
                          max_abs_diff=agree.max_abs_diff, batches=len(batches), preprocessed=preprocessed)
