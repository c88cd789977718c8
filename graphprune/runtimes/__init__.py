"""Edge runtimes beside ONNX Runtime: ExecuTorch (XNNPACK delegate) and OpenVINO (CPU plugin).

Both are optional (``pip install 'graphprune[edge]'``). Importing this package imports
neither runtime; each function imports its runtime when called and raises
:class:`~graphprune.errors.MissingRuntimeError` naming the extra if it is missing.
"""
from .optional import EDGE_EXTRA, optional_runtime
from .kinds import Precision, Runtime, parse_precisions, parse_runtimes
from .executorch import ExecuTorchModel, ExecuTorchResult, export_executorch
from .openvino import OpenVINOModel, OpenVINOResult, export_openvino
from .artifacts import artifact_bytes, build_artifacts

__all__ = ["EDGE_EXTRA", "optional_runtime", "Runtime", "Precision", "parse_runtimes", "parse_precisions",
           "export_executorch", "ExecuTorchResult", "ExecuTorchModel", "export_openvino", "OpenVINOResult",
           "OpenVINOModel", "build_artifacts", "artifact_bytes"]
