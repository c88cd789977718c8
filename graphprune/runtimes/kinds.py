"""Which runtime runs a model, and at which precision: enums, parsed once at the boundary (CLI, API).

Every runtime runs on the CPU: ONNX Runtime (CPUExecutionProvider, the default), OpenVINO (CPU
plugin, inference precision pinned to f32) and ExecuTorch (XNNPACK delegate). int8 means static
post-training quantisation: QDQ ONNX for ONNX Runtime and OpenVINO, pt2e for ExecuTorch.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from enum import Enum
from typing import Iterable

from ..errors import InputError
from .optional import EDGE_EXTRA

__all__ = ["Runtime", "Precision", "parse_runtimes", "parse_precisions"]


class Runtime(Enum):
    """A CPU inference runtime."""

    ORT = "ort"
    OPENVINO = "openvino"
    EXECUTORCH = "executorch"

    @property
    def label(self) -> str:
        return {Runtime.ORT: "ONNX Runtime", Runtime.OPENVINO: "OpenVINO",
                Runtime.EXECUTORCH: "ExecuTorch-XNNPACK"}[self]

    @property
    def distribution(self) -> str:
        """The pip distribution whose version names this runtime."""
        return {Runtime.ORT: "onnxruntime", Runtime.OPENVINO: "openvino", Runtime.EXECUTORCH: "executorch"}[self]

    @property
    def suffix(self) -> str:
        """File suffix of this runtime's artefact (OpenVINO also reads .onnx; its IR has a .bin beside the .xml)."""
        return {Runtime.ORT: ".onnx", Runtime.OPENVINO: ".xml", Runtime.EXECUTORCH: ".pte"}[self]

    def installed(self) -> bool:
        return importlib.util.find_spec(self.distribution) is not None

    def version(self) -> str:
        """The installed version; MissingRuntimeError naming the extra if it is not installed."""
        from ..errors import MissingRuntimeError

        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            if self is Runtime.ORT:
                raise MissingRuntimeError("ONNX Runtime is not installed; pip install onnxruntime") from None
            raise MissingRuntimeError(
                f"{self.label} is not installed; install the edge runtimes with: {EDGE_EXTRA}") from None


class Precision(Enum):
    """Numeric precision of the deployed model."""

    FP32 = "fp32"
    INT8 = "int8"


def _parse(enum: type[Enum], items: str | Iterable, what: str) -> tuple:
    if isinstance(items, enum):
        return (items,)
    if isinstance(items, str):
        items = [p.strip() for p in items.split(",") if p.strip()]
    out = []
    for item in items:
        if isinstance(item, enum):
            value = item
        else:
            try:
                value = enum(item)
            except ValueError:
                raise InputError(f"unknown {what} {item!r}; use one of {', '.join(e.value for e in enum)} "
                                 "(comma-separated)") from None
        if value not in out:
            out.append(value)
    if not out:
        raise InputError(f"no {what} given; use one or more of {', '.join(e.value for e in enum)}")
    return tuple(out)


def parse_runtimes(items: str | Runtime | Iterable[str | Runtime]) -> tuple[Runtime, ...]:
    """"ort,openvino" (or enums, or names) -> (Runtime.ORT, Runtime.OPENVINO); InputError on an unknown name."""
    return _parse(Runtime, items, "runtime")


def parse_precisions(items: str | Precision | Iterable[str | Precision]) -> tuple[Precision, ...]:
    """"fp32,int8" (or enums, or names) -> (Precision.FP32, Precision.INT8); InputError on an unknown name."""
    return _parse(Precision, items, "precision")
