"""Where the latency goes: ONNX Runtime's own per-op profile of a dense and a pruned model, by op kind.

Usage:
  python bench/latency_breakdown.py [--models mobilenet_v2,densenet121,resnet50] [--ratio 0.5]
      [--target measured] [--runs 30]

Why: the latency ratio / MACs ratio quotient of a pruned model is above 1 when part of its time does
not shrink with the MACs. This script measures which part. Each model is pruned at ``--ratio`` (L2,
local) with ``--target`` ("measured" = the cached or freshly calibrated ORT fp32 one-thread profile;
or any target name), both models are exported to ONNX and run in ONNX Runtime with its profiler
(edge profile: 1 thread pinned to one core, ORT_ENABLE_ALL, spinning off), ``--runs`` times after a
warm-up, the dense and the pruned model's runs alternating. Every kernel's time is summed by kind over the timed runs and divided by their count:

* dense conv, depthwise conv (a Conv or FusedConv whose weight has one input channel per group)
  and per-channel scale (a 1x1 depthwise conv: the exporter's spelling of a BatchNorm that no conv
  absorbs, e.g. DenseNet's pre-activation BN), with their MACs (weight elements x output pixels,
  from the shapes the profiler records);
* every other op type by name (NCHWc layout reorders, pooling, element-wise, Concat, ...);
* "outside kernels": the wall time per run minus the sum of its kernel times (session overhead).

The table gives each kind's ms dense and pruned, their ratio, and its share of the latency the
pruned model did not lose relative to its MACs ratio (the "excess" = pruned ms - MACs ratio x dense ms,
per kind, as a share of the total excess).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import tempfile
import time

import torch

import graphprune
from graphprune import timing
from graphprune.export import as_input_tuple, export_onnx
from graphprune.models import ZOO
from graphprune.runtimes import Runtime
from graphprune.runtimes.calibration import calibrate
from graphprune.runtimes.profiles import resolve_target

CONV_OPS = ("Conv", "FusedConv")


def kind_of(event: dict) -> tuple[str, int]:
    """(kind, MACs) of one profiler kernel event."""
    args = event["args"]
    op = args["op_name"]
    if op not in CONV_OPS:
        return op, 0
    shapes = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
    out = [next(iter(s.values())) for s in args.get("output_type_shape", [])]
    weight, output = shapes[1], out[0]
    pixels = math.prod(output[2:4])
    if len(weight) == 4 and weight[1] == 1:
        kind = "per-channel scale (1x1 depthwise)" if weight[2:] == [1, 1] else "depthwise conv"
    else:
        kind = "dense conv"
    return kind, math.prod(weight) * pixels


def _session(path: str, inputs):
    import onnxruntime as ort

    options = timing.session_options(timing.EDGE)
    options.enable_profiling = True
    options.profile_file_prefix = path + ".profile"
    sess = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), as_input_tuple(inputs, path))}
    return sess, feeds


def _by_kind(sess, warmup: int, runs: int, wall_ms: float) -> tuple[dict[str, float], dict[str, int]]:
    """({kind: ms per run}, {kind: MACs per run}) of the timed runs in the session's profile."""
    profile_file = sess.end_profiling()
    with open(profile_file) as f:
        events = json.load(f)
    os.remove(profile_file)
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    timed = kernels[-runs * (len(kernels) // (runs + warmup)):]  # the last `runs` runs (warm-up first)
    ms, macs = collections.Counter(), collections.Counter()
    for event in timed:
        kind, m = kind_of(event)
        ms[kind] += event["dur"] / 1e3 / runs
        macs[kind] += m // runs
    ms["outside kernels"] = wall_ms - sum(ms.values())
    return dict(ms), dict(macs)


def profile_ms(paths: dict[str, str], inputs, runs: int, warmup: int = 10) -> dict[str, tuple[dict, dict, float]]:
    """{label: ({kind: ms per run}, {kind: MACs per run}, wall ms per run)}: the models' runs alternate, one
    run each per round, so a slow spell of the machine lands on all of them."""
    with timing.pinned(timing.EDGE):
        sessions = {label: _session(path, inputs) for label, path in paths.items()}
        for sess, feeds in sessions.values():
            for _ in range(warmup):
                sess.run(None, feeds)
        wall = dict.fromkeys(paths, 0.0)
        labels = list(paths)
        for r in range(runs):
            for label in labels[r % 2:] + labels[:r % 2]:
                sess, feeds = sessions[label]
                t0 = time.perf_counter()
                sess.run(None, feeds)
                wall[label] += (time.perf_counter() - t0) * 1e3 / runs
    return {label: (*_by_kind(sess, warmup, runs, wall[label]), wall[label])
            for label, (sess, _) in sessions.items()}


def report(name: str, ratio: float, target, runs: int, work: str) -> None:
    spec = ZOO[name]
    model, inputs = spec.build().eval(), spec.example_inputs()
    result = graphprune.prune_graph(model, inputs, ratio=ratio, target=target)
    macs_ratio = result.report.macs_after / result.report.macs_before
    paths = {}
    for label, module in (("dense", model), ("pruned", result.model)):
        paths[label] = os.path.join(work, f"{name}-{label}.onnx")
        export_onnx(module, inputs, paths[label])
    timed = profile_ms(paths, inputs, runs)
    (dense, dense_macs, dense_wall), (pruned, pruned_macs, pruned_wall) = timed["dense"], timed["pruned"]
    latency_ratio = pruned_wall / dense_wall
    print(f"\n{name} at ratio {ratio} ({target.name}): MACs ratio {macs_ratio:.3f}, mean {dense_wall:.2f} -> "
          f"{pruned_wall:.2f} ms (profiler on), latency ratio {latency_ratio:.3f}, quotient {latency_ratio / macs_ratio:.2f}")
    excess = {k: pruned.get(k, 0.0) - macs_ratio * dense.get(k, 0.0) for k in dense.keys() | pruned.keys()}
    total_excess = sum(excess.values())
    print("| op kind | dense ms | pruned ms | time ratio | MACs ratio | share of excess |\n|---|---:|---:|---:|---:|---:|")
    for kind in sorted(excess, key=lambda k: -dense.get(k, 0.0)):
        d, p = dense.get(kind, 0.0), pruned.get(kind, 0.0)
        if max(d, p) < 0.005 * dense_wall:
            continue
        m = f"{pruned_macs[kind] / dense_macs[kind]:.3f}" if dense_macs.get(kind) else ""
        ratio_cell = f"{p / d:.3f}" if d > 0 else "new"
        print(f"| {kind} | {d:.2f} | {p:.2f} | {ratio_cell} | {m} | {excess[kind] / total_excess:+.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,densenet121,resnet50")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--target", default="measured")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    target = calibrate("ort", "fp32") if args.target == "measured" else resolve_target(args.target)
    print(f"CPU: {timing.cpu_name()}; ONNX Runtime {Runtime.ORT.version()}; torch {torch.__version__}; "
          f"edge profile: 1 thread, pinned")
    print(f"command: python {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory() as work:
        for name in args.models.split(","):
            report(name, args.ratio, target, args.runs, work)


if __name__ == "__main__":
    main()
