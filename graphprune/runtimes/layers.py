"""Time one conv or linear layer in a runtime, in this process: the unit of latency tables and calibration.

A layer is built as a one-node model: for ONNX Runtime and OpenVINO an ONNX graph written directly
(Conv, or MatMul + Add), quantised to QDQ int8 with :func:`graphprune.quantize.quantize_onnx` for
int8; for ExecuTorch the ``nn.Conv2d`` / ``nn.Linear`` lowered to XNNPACK (pt2e for int8). Inputs
are seeded random normals; int8 calibrates on 4 such batches. The latency is the median of ``runs``
timed runs after 3 warm-up runs, under the profile's thread count, pinned to one core for a pinned
profile from before the model is built to the last run (the caller's affinity is restored).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Callable

import numpy as np
import torch
from onnx import ModelProto, TensorProto, helper, numpy_helper

from .kinds import Precision, Runtime

__all__ = ["LayerTimer", "conv_onnx", "linear_onnx"]


def conv_onnx(n, cin, cout, h, w, k, stride, pad, groups, dilation=(1, 1)) -> ModelProto:
    """A one-Conv ONNX model, input ``x`` of shape (n, cin, h, w)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((cout, cin // groups, *k)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(cout, np.float32), "b")
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(k), strides=list(stride),
                            pads=list(pad) * 2, group=groups, dilations=list(dilation))
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, cin, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def linear_onnx(rows, fin, fout) -> ModelProto:
    """A MatMul + Add ONNX model, input ``x`` of shape (rows, fin)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((fin, fout)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(fout, np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, fin])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


class LayerTimer:
    """Median milliseconds of single conv/linear layers in ``runtime`` at ``precision`` (see the module docstring)."""

    def __init__(self, runtime: Runtime = Runtime.ORT, precision: Precision = Precision.FP32, *,
                 threads: int = 1, pin_core: bool = True, runs: int = 15):
        self.runtime, self.precision, self.threads, self.pin_core, self.runs = runtime, precision, threads, pin_core, runs
        self.version = runtime.version()
        self.measured = 0
        if runtime is Runtime.EXECUTORCH:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's threads (process-wide)

    def conv_ms(self, n, cin, cout, h, w, k, stride, pad, groups, dilation=(1, 1)) -> float:
        module = torch.nn.Conv2d(cin, cout, tuple(k), tuple(stride), tuple(pad), tuple(dilation), groups)
        return self._time(lambda: conv_onnx(n, cin, cout, h, w, k, stride, pad, groups, dilation), module,
                          (n, cin, h, w))

    def linear_ms(self, rows, fin, fout) -> float:
        return self._time(lambda: linear_onnx(rows, fin, fout), torch.nn.Linear(fin, fout), (rows, fin))

    def _time(self, onnx_model: Callable[[], ModelProto], module: torch.nn.Module, shape: tuple[int, ...]) -> float:
        x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        from ..bench.harness import Profile, pinned

        # Pinned before the model is built: threads a runtime starts then (OpenVINO's workers) share the core.
        # Pinning only the calling thread of a built OpenVINO model made a conv 10-20x slower here.
        with pinned(Profile("layer", self.threads, self.pin_core)), tempfile.TemporaryDirectory() as work:
            run = self._runner(onnx_model, module.eval(), x, work)
            times = self._timed(run)
        self.measured += 1
        return statistics.median(times)

    def _runner(self, onnx_model, module, x, work) -> Callable[[], object]:
        g = torch.Generator().manual_seed(1)
        batches = [torch.randn(x.shape, generator=g) for _ in range(4)] if self.precision is Precision.INT8 else None
        if self.runtime is Runtime.EXECUTORCH:
            from .executorch import ExecuTorchModel, export_executorch

            path = export_executorch(module, (x,), os.path.join(work, "layer.pte"), quantize=batches,
                                     min_cosine=0.9).path
            model = ExecuTorchModel(path)
            return lambda: model(x)
        path = os.path.join(work, "layer.onnx")
        with open(path, "wb") as f:
            f.write(onnx_model().SerializeToString())
        if batches is not None:
            from ..quantize import quantize_onnx

            path = quantize_onnx(path, os.path.join(work, "layer.int8.onnx"), batches, min_cosine=0.9).path
        if self.runtime is Runtime.OPENVINO:
            from .openvino import OpenVINOModel

            model = OpenVINOModel(path, num_threads=self.threads)
            array = x.numpy()
            return lambda: model.infer(array)
        import onnxruntime as ort

        from ..bench.harness import Profile, session_options

        options = session_options(Profile("layer", self.threads, self.pin_core))
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)

    def _timed(self, run: Callable[[], object]) -> list[float]:
        for _ in range(3):
            run()
        times = []
        for _ in range(self.runs):
            t0 = time.perf_counter_ns()
            run()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        return times
