"""Time one conv or linear layer in a runtime, in this process: the unit of latency tables and calibration.

A layer is built as a one-node model: for ONNX Runtime and OpenVINO an ONNX graph written directly
(Conv, or MatMul + Add), quantised to QDQ int8 with :func:`graphprune.quantize.quantize_onnx` for
int8; for ExecuTorch the ``nn.Conv2d`` / ``nn.Linear`` lowered to XNNPACK (pt2e for int8). Inputs
are seeded random normals; int8 calibrates on 4 such batches. The latency is the median of ``runs``
timed runs after 3 warm-up runs, under the profile's thread count, pinned to one core for a pinned
profile from before the model is built to the last run (the caller's affinity is restored).

Layers that are compared with each other (a calibration grid) are timed together by
:meth:`LayerTimer.time_layers`: all are built first, then timed in ``ROUNDS`` rounds that rotate
their order, so a slow spell of a shared machine lands on every layer rather than on a few counts.
"""
from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping

import numpy as np
import torch
from onnx import ModelProto, TensorProto, helper, numpy_helper

from .kinds import Precision, Runtime

__all__ = ["LayerTimer", "ConvLayer", "LinearLayer", "conv_onnx", "linear_onnx"]

#: rounds of an interleaved timing (time_layers)
ROUNDS = 5


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


@dataclass(frozen=True)
class ConvLayer:
    """A Conv2d on an (n, cin, h, w) input."""

    n: int
    cin: int
    cout: int
    h: int
    w: int
    k: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)
    groups: int = 1
    dilation: tuple[int, int] = (1, 1)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n, self.cin, self.h, self.w)

    def onnx(self) -> ModelProto:
        return conv_onnx(self.n, self.cin, self.cout, self.h, self.w, self.k, self.stride, self.pad, self.groups,
                         self.dilation)

    def module(self) -> torch.nn.Module:
        return torch.nn.Conv2d(self.cin, self.cout, tuple(self.k), tuple(self.stride), tuple(self.pad),
                               tuple(self.dilation), self.groups)


@dataclass(frozen=True)
class LinearLayer:
    """A Linear layer on a (rows, fin) input."""

    rows: int
    fin: int
    fout: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.rows, self.fin)

    def onnx(self) -> ModelProto:
        return linear_onnx(self.rows, self.fin, self.fout)

    def module(self) -> torch.nn.Module:
        return torch.nn.Linear(self.fin, self.fout)


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
        return self.time_layers({0: ConvLayer(n, cin, cout, h, w, k, stride, pad, groups, dilation)})[0]

    def linear_ms(self, rows, fin, fout) -> float:
        return self.time_layers({0: LinearLayer(rows, fin, fout)})[0]

    def time_layers(self, layers: Mapping[Hashable, ConvLayer | LinearLayer]) -> dict[Hashable, float]:
        """{key: median ms} of every layer, all built first and then timed in rotating rounds."""
        from ..timing.harness import Profile, pinned

        # Pinned before the models are built: threads a runtime starts then (OpenVINO's workers) share the core.
        # Pinning only the calling thread of a built OpenVINO model made a conv 10-20x slower here.
        with pinned(Profile("layer", self.threads, self.pin_core)), tempfile.TemporaryDirectory() as work:
            runners = {}
            for i, (key, layer) in enumerate(layers.items()):
                x = torch.from_numpy(np.random.default_rng(0).standard_normal(layer.input_shape).astype(np.float32))
                os.makedirs(folder := os.path.join(work, str(i)))
                runners[key] = self._runner(layer.onnx, layer.module().eval(), x, folder)
            times = self._timed(runners)
        self.measured += len(layers)
        return {key: statistics.median(t) for key, t in times.items()}

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

        from ..timing.harness import Profile, session_options

        options = session_options(Profile("layer", self.threads, self.pin_core))
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)

    def _timed(self, runners: Mapping[Hashable, Callable[[], object]]) -> dict[Hashable, list[float]]:
        """3 warm-up runs each, then ROUNDS rounds of about runs/ROUNDS runs each, the order rotated every round."""
        for run in runners.values():
            for _ in range(3):
                run()
        keys = list(runners)
        rounds = min(ROUNDS, self.runs)
        per_round = math.ceil(self.runs / rounds)
        times = {key: [] for key in keys}
        for r in range(rounds):
            k = r % len(keys)
            for key in keys[k:] + keys[:k]:
                run = runners[key]
                for _ in range(per_round):
                    t0 = time.perf_counter_ns()
                    run()
                    times[key].append((time.perf_counter_ns() - t0) / 1e6)
        return times
