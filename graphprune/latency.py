"""Latency-aware planning: per-layer ONNX Runtime latencies, measured once and cached on disk.

Model latency is predicted as
    sum over conv/linear layers of LUT(layer shape after the plan)
    + other * (activation volume after / before)
where LUT entries are single-layer ONNX models timed in ONNX Runtime under the profile's
settings (keyed by layer shape; the cache file is keyed by CPU, ORT version and threads),
and `other` is the measured latency of the whole unpruned model minus its layers' sum
(element-wise ops, pooling, layout changes), scaled by how much activation data is left.
`prune_to_latency` bisects the plan on that prediction, measures the result, and re-plans
against the measured/predicted ratio (at most `corrections` times), so the figure it
returns is measured.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch.fx as fx
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from . import bench
from .analysis import Analysis, PruneResult, analyse
from .atomic import write_json
from .cost import kept_share
from .export import export_onnx
from .groups import DependencyGraph, Role, Slot
from .options import CountBudget, Options
from .planner import PrunePlan
from .trace import value_meta


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def default_cache_path(profile: bench.Profile) -> str:
    key = f"{_cpu_name()}|ort {ort.__version__}|threads {profile.intra_op_threads}|{profile.graph_optimization_level}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    root = os.environ.get("GRAPHPRUNE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "graphprune"))
    return os.path.join(root, f"latency-{digest}.json")


class LatencyTable:
    """Layer-shape -> median milliseconds, measured on first use and saved (atomically) on `save()`."""

    def __init__(self, profile: bench.Profile = bench.EDGE, path: str | None = None, runs: int = 15):
        self.profile, self.runs = profile, runs
        self.path = path or default_cache_path(profile)
        self.entries: dict[str, float] = {}
        self.measured = 0
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.entries = json.load(f).get("entries", {})

    def conv_ms(self, n, cin, cout, h, w, k, stride, pad, groups, dilation=(1, 1)) -> float:
        key = f"conv n{n} c{cin}>{cout} {h}x{w} k{k} s{stride} p{pad} g{groups} d{dilation}"
        if key not in self.entries:
            self.entries[key] = self._time(_conv_model(n, cin, cout, h, w, k, stride, pad, groups, dilation), (n, cin, h, w))
        return self.entries[key]

    def linear_ms(self, rows, fin, fout) -> float:
        key = f"linear r{rows} {fin}>{fout}"
        if key not in self.entries:
            self.entries[key] = self._time(_linear_model(rows, fin, fout), (rows, fin))
        return self.entries[key]

    def _time(self, model: onnx.ModelProto, shape) -> float:
        options = bench.session_options(self.profile)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        x = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
        with bench.pinned(self.profile):
            for _ in range(3):
                session.run(None, x)
            times = []
            for _ in range(self.runs):
                t0 = time.perf_counter_ns()
                session.run(None, x)
                times.append((time.perf_counter_ns() - t0) / 1e6)
        self.measured += 1
        return statistics.median(times)

    def save(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        write_json(self.path, {"cpu": _cpu_name(), "onnxruntime": ort.__version__, "entries": self.entries})


def _conv_model(n, cin, cout, h, w, k, stride, pad, groups, dilation) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((cout, cin // groups, *k)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(cout, np.float32), "b")
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(k), strides=list(stride),
                            pads=list(pad) * 2, group=groups, dilations=list(dilation))
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, cin, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _linear_model(rows, fin, fout) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((fin, fout)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(fout, np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, fin])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@dataclass(frozen=True)
class _Layer:
    node: str
    module: nn.Module
    in_slot: Slot | None  # activation slot of the input channels
    out_slot: Slot  # producer rows of the weight
    in_shape: tuple[int, ...]


class LatencyModel:
    """Predicted latency (ms) of the model once a plan is applied; see the module docstring."""

    def __init__(self, gm: fx.GraphModule, graph: DependencyGraph, table: LatencyTable, measured_ms: float):
        self.graph, self.table = graph, table
        modules = dict(gm.named_modules())
        self.layers, self.volumes = [], []
        for node in gm.graph.nodes:
            meta = node.meta.get("gp_value")
            if node.op == "call_module" and isinstance(modules[node.target], (nn.Conv2d, nn.Linear)):
                x = node.args[0]
                d = graph.channel_dims.get(x.name)
                in_dim = len(value_meta(x).shape) - (3 if isinstance(modules[node.target], nn.Conv2d) else 1)
                in_slot = Slot(x.name, in_dim) if d == in_dim else None
                self.layers.append(_Layer(node.name, modules[node.target], in_slot,
                                          Slot(f"{node.target}.weight", 0, Role.PRODUCER), value_meta(x).shape))
            if hasattr(meta, "shape") and isinstance(graph.channel_dims.get(node.name), int):
                self.volumes.append((Slot(node.name, graph.channel_dims[node.name]), math.prod(meta.shape)))
        self.layers_full = sum(self._layer_ms(layer, lambda s: None) for layer in self.layers)
        self.other = max(0.0, measured_ms - self.layers_full)
        self.volume_full = sum(v for _, v in self.volumes)

    def _kept(self, plan: PrunePlan):
        def kept(slot: Slot | None) -> int | None:
            share = kept_share(self.graph, plan, slot) if slot is not None else None
            return share[0] if share else None
        return kept

    def _layer_ms(self, layer: _Layer, kept) -> float:
        m = layer.module
        if isinstance(m, nn.Conv2d):
            n, cin, h, w = layer.in_shape
            cin2 = kept(layer.in_slot) or cin
            cout = kept(layer.out_slot) or m.out_channels
            groups = m.groups if m.groups == 1 else max(1, cin2 // (m.in_channels // m.groups))
            return self.table.conv_ms(n, cin2, cout, h, w, tuple(m.kernel_size), tuple(m.stride), tuple(m.padding),
                                      groups, tuple(m.dilation))
        rows = math.prod(layer.in_shape[:-1])
        return self.table.linear_ms(rows, kept(layer.in_slot) or m.in_features, kept(layer.out_slot) or m.out_features)

    def predict(self, plan: PrunePlan) -> float:
        layers = sum(self._layer_ms(layer, self._kept(plan)) for layer in self.layers)
        volume = 0.0
        for slot, v in self.volumes:
            k, n = kept_share(self.graph, plan, slot) or (1, 1)
            volume += v * k / n
        return layers + self.other * volume / max(self.volume_full, 1)


def measure_ms(model: nn.Module, example_inputs, profile: bench.Profile, *, repeats: int = 30) -> float:
    """p50 latency of `model` exported to ONNX, timed by the benchmark harness."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        export_onnx(model, example_inputs, path)
        report = bench.benchmark({"m": path}, profile, warmup=5, repeats=repeats, rounds=1)
    return report.rows[0].p50_ms


@dataclass(frozen=True)
class LatencyBudget(CountBudget):
    """Prune until the predicted latency (ms) is at most `goal`."""

    model: LatencyModel | None = None
    original_ms: float = 0.0
    what = "latency (ms)"

    def count(self, analysis: Analysis, plan: PrunePlan) -> float:
        return self.model.predict(plan)

    def current(self, analysis: Analysis) -> float:
        return self.original_ms


@dataclass(frozen=True)
class LatencyResult:
    result: PruneResult
    requested_ms: float
    predicted_ms: float
    measured_ms: float
    original_ms: float
    layers_measured: int  # new LUT entries measured in this call


def prune_to_latency(model: nn.Module, example_inputs, target_ms: float, *, profile: bench.Profile = bench.EDGE,
                     table: LatencyTable | None = None, corrections: int = 2, **prune_kwargs) -> LatencyResult:
    """Prune until the ONNX Runtime latency in `profile` is at most about `target_ms` (measured, see module docstring).

    `prune_kwargs`: prune_graph's keywords for the strategy, target, calibration and `ignore`
    (and `rules`, `strict` for the analysis). The model is traced once.
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    rules, strict = prune_kwargs.pop("rules", None), prune_kwargs.pop("strict", False)
    options = Options.from_keywords(**prune_kwargs)
    table = table or LatencyTable(profile)
    before_entries = len(table.entries)
    original_ms = measure_ms(model, inputs, profile)
    analysis = analyse(model, inputs, rules=rules, strict=strict)
    latency = LatencyModel(analysis.graph_module, analysis.dependencies, table, original_ms)
    goal = target_ms
    result = predicted = measured = None
    for _ in range(corrections + 1):
        result = options.prune(analysis, LatencyBudget(goal, latency, original_ms))
        predicted = latency.predict(result.plan)
        measured = measure_ms(result.model, inputs, profile)
        if abs(measured - target_ms) <= 0.05 * target_ms:
            break
        goal = goal * target_ms / measured  # the prediction's bias at this size, corrected by measurement
    table.save()
    return LatencyResult(result, target_ms, predicted, measured, original_ms, len(table.entries) - before_entries)
