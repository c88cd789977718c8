"""Pruned means faster: latency ratio vs MACs ratio with the default target, and latency-aware planning.

Usage: python bench/latency_targets.py [--models resnet50,mobilenet_v2,densenet121] [--repeats 50] [--json PATH]

Part 1, for each model: prune at ratio 0.5 (L2, local) with the default target ("auto":
ort-x86 on this machine) and with target="none" (no rounding); export the original and
both pruned models to ONNX and time all three in ONE interleaved run of the harness
(edge profile: 1 thread, pinned). Prints MACs ratio, p50 latency ratio and their quotient
(latency ratio / MACs ratio; 1.0 means latency falls exactly as the MACs do).
Part 2: prune_to_latency(resnet50, half of its measured latency) and report the requested,
predicted and measured latency.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch

import graphprune
from graphprune import timing
from graphprune.export import export_onnx
from graphprune.latency import LatencyTable, prune_to_latency
from graphprune.models import ZOO


def part1(models, repeats: int) -> dict:
    out = {}
    print(f"ratio 0.5, L2, local; edge profile ({timing.EDGE.intra_op_threads} thread, pinned), {repeats} timed runs each")
    print(f"{'model':14s} {'target':8s} {'MACs ratio':>10s} {'p50 ms':>9s} {'latency ratio':>13s} {'quotient':>9s}")
    for name in models:
        spec = ZOO[name]
        model, inputs = spec.build(), spec.example_inputs()
        variants, macs = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            variants["original"] = os.path.join(tmp, "original.onnx")
            export_onnx(model, inputs, variants["original"])
            rows = {}
            for target in ("auto", "none"):
                result = graphprune.prune_graph(model, inputs, ratio=0.5, target=target)
                path = os.path.join(tmp, f"{target}.onnx")
                export_onnx(result.model, inputs, path)
                variants[target] = path
                macs[target] = result.report.macs_after
                macs["original"] = result.report.macs_before
            report = timing.benchmark(variants, timing.EDGE, warmup=10, repeats=repeats, rounds=5, macs=macs)
        p50 = {row.name: row.p50_ms for row in report.rows}
        print(f"{name:14s} {'-':8s} {1.0:10.3f} {p50['original']:9.2f} {1.0:13.3f} {1.0:9.2f}")
        for target in ("auto", "none"):
            m_ratio, l_ratio = macs[target] / macs["original"], p50[target] / p50["original"]
            rows[target] = {"macs_ratio": m_ratio, "latency_ratio": l_ratio, "quotient": l_ratio / m_ratio,
                            "p50_ms": p50[target]}
            print(f"{'':14s} {target:8s} {m_ratio:10.3f} {p50[target]:9.2f} {l_ratio:13.3f} {l_ratio / m_ratio:9.2f}")
        out[name] = {"original_p50_ms": p50["original"], **rows}
    return out


def part2() -> dict:
    spec = ZOO["resnet50"]
    model, inputs = spec.build(), spec.example_inputs()
    table = LatencyTable(timing.EDGE)
    original = None
    from graphprune.latency import measure_ms  # noqa: PLC0415 (same harness as prune_to_latency)
    original = measure_ms(model, inputs, timing.EDGE)
    target = original / 2
    r = prune_to_latency(model, inputs, target, table=table)
    error = (r.measured_ms - target) / target
    print(f"\nlatency-aware planning, resnet50, edge profile: original {r.original_ms:.2f} ms, requested {target:.2f} ms, "
          f"predicted {r.predicted_ms:.2f} ms, measured {r.measured_ms:.2f} ms ({error:+.1%}); "
          f"{r.layers_measured} new layer shapes measured, table {table.path}")
    return {"original_ms": r.original_ms, "requested_ms": target, "predicted_ms": r.predicted_ms,
            "measured_ms": r.measured_ms, "error": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2,densenet121")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--skip-latency-target", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"CPU: {timing.cpu_name()} ({os.cpu_count()} cores); torch {torch.__version__}")
    data = {"ratio_0.5": part1(args.models.split(","), args.repeats)}
    if not args.skip_latency_target:
        data["latency_target"] = part2()
    if args.json:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.json)) or ".", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
