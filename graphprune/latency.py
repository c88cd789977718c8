"""Latency-aware planning: per-layer latencies in a runtime (ONNX Runtime, OpenVINO or ExecuTorch, fp32
or int8), measured once and cached on disk (:mod:`graphprune.runtimes.latency_table`).

Model latency is predicted as
    sum over conv/linear layers of LUT(layer shape after the plan)
    + other * (activation volume after / before)
(the layer sum scaled down to the measured latency when it exceeds it: `scale` = min(1, measured / sum))
where LUT entries are single layers timed by :class:`graphprune.runtimes.layers.LayerTimer` in the
runtime at the precision, under the profile's threads and pinning (keyed by layer shape; the cache
file is keyed by CPU, runtime and its version, precision, threads), each minus the runtime's
per-call overhead (the latency of a 1x1 linear layer: a one-layer model pays it once per layer, the
whole model once; it is largest in OpenVINO, whose every call goes through its worker threads),
and `other` is the measured latency of the whole unpruned model minus its layers' sum
(element-wise ops, pooling, layout changes), scaled by how much activation data is left.
`prune_to_latency` bisects the plan on that prediction, measures the result, and re-plans
against the measured/predicted ratio (at most `corrections` times), so the figure it
returns is measured.
"""
from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from . import timing
from .analysis import PruneResult, analyse
from .cost import kept_share
from .errors import InputError
from .groups import DependencyGraph, Role, Slot
from .options import CountBudget, ModelCounts, Options
from .planner import PrunePlan, locked_mask
from .runtimes.artifacts import build_artifacts
from .runtimes.kinds import Precision, Runtime
from .runtimes.latency_table import LatencyTable
from .trace import value_meta


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
        # layers timed alone can add up to more than the whole model (per-call costs, caches): scale them so
        # that the unpruned model is predicted at its measured latency
        self.scale = min(1.0, measured_ms / self.layers_full) if self.layers_full > 0 else 1.0
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
        return self.scale * layers + self.other * volume / max(self.volume_full, 1)

    def channel_costs(self, floor: float = 0.01) -> dict[str, float]:
        """Predicted ms saved per channel of each prunable group: (predict(nothing pruned) - predict(the
        group alone at half its width, or half its unpinned channels)) / channels removed; `Strategy.channel_costs`.

        A group whose removal saves less than `floor` times the median saving (or nothing: a
        narrower layer that times slower) costs that floor, so its channels are the last to go.
        The costs are only as good as the table: bench/latency_allocation.py measures plans ranked by them.
        """
        full = self.predict(PrunePlan({}, {}))
        saved = {}
        for g in self.graph.prunable:
            free = np.flatnonzero(~locked_mask(g))  # pinned channels are never removed
            n_drop = len(free) // 2 if g.pins else g.size - max(1, g.size // 2)
            half = PrunePlan({g.id: tuple(np.setdiff1d(np.arange(g.size), free[len(free) - n_drop:]).tolist())},
                             {g.id: g.size})
            saved[g.id] = (full - self.predict(half)) / n_drop if n_drop else 0.0
        positive = [v for v in saved.values() if v > 0]
        if not positive:
            return {}
        least = floor * float(np.median(positive))
        return {gid: max(v, least) for gid, v in saved.items()}


def random_calibration(example_inputs, n: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """Seeded random batches shaped like the inputs: int8 calibration for LATENCY only (not for accuracy)."""
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(t.shape, generator=g).to(t.dtype) for t in example_inputs) for _ in range(n)]


def measure_ms(model: nn.Module, example_inputs, profile: timing.Profile, *, repeats: int = 30,
               runtime: Runtime = Runtime.ORT, precision: Precision = Precision.FP32, calibration=None) -> float:
    """p50 latency of `model` in `runtime` at `precision`, timed by the benchmark harness.

    int8 calibrates on `calibration`, else on random batches (fine for timing, not for accuracy)."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if precision is Precision.INT8 and calibration is None:
        calibration = random_calibration(inputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_artifacts(model, inputs, tmp, "m", (runtime,), (precision,), calibration=calibration)
        report = timing.benchmark({"m": path[runtime, precision]}, profile, warmup=5, repeats=repeats, rounds=1,
                                  runtime=runtime)
    return report.rows[0].p50_ms


@dataclass(frozen=True)
class LatencyBudget(CountBudget):
    """Prune until the predicted latency (ms) is at most `goal`."""

    model: LatencyModel | None = None
    original_ms: float = 0.0
    what = "latency (ms)"

    def count(self, counts: ModelCounts, plan: PrunePlan) -> float:
        return self.model.predict(plan)

    def current(self, counts: ModelCounts) -> float:
        return self.original_ms


@dataclass(frozen=True)
class LatencyResult:
    result: PruneResult
    requested_ms: float
    predicted_ms: float
    measured_ms: float
    original_ms: float
    layers_measured: int  # new LUT entries measured in this call


def prune_to_latency(model: nn.Module, example_inputs, target_ms: float, *, profile: timing.Profile = timing.EDGE,
                     runtime: Runtime = Runtime.ORT, precision: Precision = Precision.FP32,
                     table: LatencyTable | None = None, corrections: int = 2, **prune_kwargs) -> LatencyResult:
    """Prune until the latency in `runtime` at `precision` under `profile` is at most about `target_ms`
    (measured, see module docstring). int8 is calibrated on random batches: latency, not accuracy.

    `prune_kwargs`: prune_graph's keywords for the strategy, target, calibration and `ignore`
    (and `rules`, `strict` for the analysis). The model is traced once.
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    rules, strict = prune_kwargs.pop("rules", None), prune_kwargs.pop("strict", False)
    options = Options.from_keywords(**prune_kwargs)
    table = table or LatencyTable(profile, runtime=runtime, precision=precision)
    if (table.runtime, table.precision) != (runtime, precision):
        raise InputError(f"the latency table measures {table.runtime.value}/{table.precision.value}, but "
                         f"prune_to_latency was asked for {runtime.value}/{precision.value}; pass a matching table")
    measure = functools.partial(measure_ms, profile=profile, runtime=runtime, precision=precision)
    before_entries = len(table.entries)
    original_ms = measure(model, inputs)
    analysis = analyse(model, inputs, rules=rules, strict=strict, grouped_convs=options.target.grouped_convs)
    latency = LatencyModel(analysis.graph_module, analysis.dependencies, table, original_ms)
    goal = target_ms
    result = predicted = measured = None
    for _ in range(corrections + 1):
        result = options.prune(analysis, LatencyBudget(goal, latency, original_ms))
        predicted = latency.predict(result.plan)
        measured = measure(result.model, inputs)
        if abs(measured - target_ms) <= 0.05 * target_ms:
            break
        goal = goal * target_ms / measured  # the prediction's bias at this size, corrected by measurement
        if goal >= original_ms:  # the correction asks for no pruning at all: keep this result (measured faster)
            break
    table.save()
    return LatencyResult(result, target_ms, predicted, measured, original_ms, len(table.entries) - before_entries)
