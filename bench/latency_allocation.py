"""Does a latency-aware allocation bring the latency/MACs quotient down? Allocations compared in one run.

Usage:
  python bench/latency_allocation.py [--models mobilenet_v2,densenet121] [--runtimes ort,openvino]
      [--ratio 0.5] [--warmup 10] [--repeats 30] [--rounds 15]

For every model and runtime (edge profile: 1 thread, pinned; fp32; the runtime's measured target),
four prunings of the same random-weight model, L2 importance:
  local      every group loses --ratio of its channels (what bench/edge_runtimes.py judges);
  global     --ratio of all channels, ranked by importance normalised per group;
  per-ms     --ratio of all channels, ranked by importance per predicted ms saved
             (`LatencyModel.channel_costs`, from single layers timed in that runtime);
  per-ms=lat the least per-ms pruning whose predicted latency is at most local's predicted latency.
All are built and timed with the dense model in ONE interleaved run. Printed per variant: share of
channels removed, MACs and params ratios, predicted and measured p50 ms, latency ratio and the
quotient latency ratio / MACs ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from graphprune import timing
from graphprune.analysis import analyse
from graphprune.latency import LatencyBudget, LatencyModel, LatencyTable, measure_ms
from graphprune.models import ZOO
from graphprune.options import Options, Ratio
from graphprune.runtimes import Precision, build_artifacts, parse_runtimes
from graphprune.runtimes.calibration import calibrate


def prunings(analysis, latency: LatencyModel, dense_ms: float, ratio: float, target) -> dict:
    """{variant: PruneResult} of the four allocations."""
    costs = latency.channel_costs()
    local = Options.from_keywords(target=target)
    by_importance = Options.from_keywords(target=target, scope="global")
    per_ms = Options.from_keywords(target=target, scope="global", channel_costs=costs)
    out = {"local": local.prune(analysis, Ratio(ratio)),
           "global": by_importance.prune(analysis, Ratio(ratio)),
           "per-ms": per_ms.prune(analysis, Ratio(ratio))}
    goal = latency.predict(out["local"].plan)
    out["per-ms=lat"] = per_ms.prune(analysis, LatencyBudget(goal, latency, dense_ms))
    return out


def removed_share(result) -> float:
    kept = sum(len(k) for k in result.plan.keep.values())
    sizes = sum(result.plan.sizes.values())
    total = sum(g.size for g in result.graph.prunable)
    return (sizes - kept) / total


def run(name: str, runtime, ratio: float, args, work: str) -> None:
    spec = ZOO[name]
    model, inputs = spec.build().eval(), spec.example_inputs()
    target = calibrate(runtime, Precision.FP32)
    t0 = time.perf_counter()
    analysis = analyse(model, inputs)
    table = LatencyTable(timing.EDGE, runtime=runtime)
    dense_ms = measure_ms(model, inputs, timing.EDGE, runtime=runtime)
    latency = LatencyModel(analysis.graph_module, analysis.dependencies, table, dense_ms)
    variants = prunings(analysis, latency, dense_ms, ratio, target)
    table.save()
    fp32 = (runtime,), (Precision.FP32,)
    files = {"dense": build_artifacts(model, inputs, work, f"{name}-dense", *fp32)[runtime, Precision.FP32]}
    macs = {"dense": analysis.stats.macs}
    for variant, result in variants.items():
        files[variant] = build_artifacts(result.model, inputs, work, f"{name}-{variant}", *fp32)[runtime, Precision.FP32]
        macs[variant] = result.report.macs_after
    built = time.perf_counter() - t0
    report = timing.benchmark(files, timing.EDGE, runtime=runtime, warmup=args.warmup, repeats=args.repeats,
                              rounds=args.rounds, macs=macs)
    rows = {r.name: r for r in report.rows}
    dense = rows["dense"]
    print(f"\n{name} on {runtime.label}, target {target.name}, dense {dense.p50_ms:.2f} ms "
          f"({built:.0f} s to plan and build)")
    print("| allocation | channels removed | MACs ratio | params ratio | predicted ms | p50 ms | latency ratio | "
          "quotient |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant, result in variants.items():
        m = rows[variant].macs / dense.macs
        lat = rows[variant].p50_ms / dense.p50_ms
        params = result.report.params_after / result.report.params_before
        print(f"| {variant} | {removed_share(result):.3f} | {m:.3f} | {params:.3f} | "
              f"{latency.predict(result.plan) * dense.p50_ms / dense_ms:.2f} | {rows[variant].p50_ms:.2f} | "
              f"{lat:.3f} | {lat / m:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,densenet121")
    parser.add_argument("--runtimes", default="ort,openvino")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    runtimes = parse_runtimes(args.runtimes)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    versions = ", ".join(f"{r.label} {r.version()}" for r in runtimes)
    print(f"CPU: {timing.cpu_name()} ({os.cpu_count()} cores); {versions}; torch {torch.__version__}; "
          f"edge profile: {timing.EDGE.intra_op_threads} thread, pinned")
    print(f"command: python {' '.join(sys.argv)}")
    print("predicted ms are scaled to this run's dense p50 (the latency model is fitted to its own dense timing)")
    with tempfile.TemporaryDirectory() as work:
        for name in args.models.split(","):
            for runtime in runtimes:
                run(name, runtime, args.ratio, args, work)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
