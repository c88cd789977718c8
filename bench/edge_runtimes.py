"""Pruned means faster on every edge runtime: ONNX Runtime, OpenVINO, ExecuTorch-XNNPACK; fp32 and int8.

Usage:
  python bench/edge_runtimes.py [--models resnet50,mobilenet_v2,densenet121,vit_tiny]
      [--runtimes ort,openvino,executorch] [--ratio 0.5] [--warmup 10] [--repeats 50] [--rounds 25]
      [--counts 32,48,...] [--json PATH] [--plot PATH]

Protocol (edge profile: 1 thread, pinned to one core; every figure names the CPU and runtime version):
1. For every runtime and precision, ``graphprune.runtimes.calibration.calibrate`` gives the measured Target (read
   from the cache when this CPU, runtime version and thread count were calibrated before).
2. For every model, every runtime: prune at ``--ratio`` (L2, local) with the runtime's measured fp32
   target, its measured int8 target, ``target="none"`` and the fixed ``ort-x86`` rule; build the
   runtime's files (dense and pruned, fp32 and int8; int8 calibrated on 4 RANDOM batches of these
   random-weight models, so the int8 check against fp32 only asks cosine >= --min-cosine, 0.9 by
   default: the figures are latencies, not accuracies; examples/digits_pruning.py measures int8
   accuracy on real data); time ALL variants of that model in ONE interleaved run.
3. Tables: fp32 quotient = latency ratio / MACs ratio (goal <= 1.10); the same for int8; int8 speed-up
   over pruned fp32 and over dense fp32; measured target vs "none" vs "ort-x86".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

import graphprune
from graphprune import timing
from graphprune.atomic import write_atomically
from graphprune.errors import ExportError
from graphprune.latency import random_calibration
from graphprune.models import ZOO
from graphprune.runtimes import Precision, build_artifacts, parse_runtimes
from graphprune.runtimes.calibration import calibrate
from graphprune.runtimes.profiles import resolve_target

FP32, INT8 = Precision.FP32, Precision.INT8
#: variant -> (which pruning, precision); "dense" is the unpruned model
VARIANTS = {"dense": ("dense", FP32), "dense+int8": ("dense", INT8), "measured": ("measured", FP32),
            "measured+int8": ("measured-int8", INT8), "none": ("none", FP32), "ort-x86": ("ort-x86", FP32)}


def header(runtimes) -> str:
    versions = ", ".join(f"{r.label} {r.version()}" for r in runtimes)
    return (f"CPU: {timing.cpu_name()} ({os.cpu_count()} cores); {versions}; torch {torch.__version__}; "
            f"edge profile: {timing.EDGE.intra_op_threads} thread, pinned")


def targets_of(runtimes, counts) -> dict:
    out = {}
    for runtime in runtimes:
        for precision in (FP32, INT8):
            t0 = time.perf_counter()
            target = calibrate(runtime, precision, counts=counts)
            out[runtime, precision] = target
            print(f"  {target.name}: dense conv {target.dense_conv}, depthwise {target.grouped_conv}, "
                  f"linear {target.linear}, one_block {target.one_block} ({time.perf_counter() - t0:.0f} s)")
    return out


def prunings(model, inputs, ratio, runtime, targets) -> dict:
    """{pruning name: (module, MACs)}; the dense model is one of them."""
    out = {}
    for name, target in (("measured", targets[runtime, FP32]), ("measured-int8", targets[runtime, INT8]),
                         ("none", "none"), ("ort-x86", resolve_target("ort-x86"))):
        result = graphprune.prune_graph(model, inputs, ratio=ratio, target=target)
        out[name] = (result.model, result.report.macs_after)
        out["dense"] = (model, result.report.macs_before)
    return out


def run_model(name, ratio, runtimes, targets, args, work) -> dict:
    spec = ZOO[name]
    model, inputs = spec.build().eval(), spec.example_inputs()
    calibration = random_calibration(inputs, 4)
    out = {}
    for runtime in runtimes:
        t0 = time.perf_counter()
        pruned = prunings(model, inputs, ratio, runtime, targets)
        files, macs = {}, {}
        for variant, (pruning, precision) in VARIANTS.items():
            module, macs[variant] = pruned[pruning]
            stem = f"{name}-{runtime.value}-{pruning}"
            try:
                files[variant] = build_artifacts(module, inputs, work, stem, (runtime,), (precision,),
                                                 calibration=calibration,
                                                 min_cosine=args.min_cosine)[runtime, precision]
            except ExportError as exc:  # e.g. int8 too far from fp32 on random weights: that variant is left out
                print(f"  {name} {variant} on {runtime.label}: not built ({' '.join(str(exc).split())[:300]})")
                macs.pop(variant)
        built = time.perf_counter() - t0
        report = timing.benchmark(files, timing.EDGE, runtime=runtime, warmup=args.warmup, repeats=args.repeats,
                                  rounds=args.rounds, macs=macs)
        print(f"\n{name} on {runtime.label} ({built:.0f} s to build the files)")
        print(report.format_table())
        out[runtime] = report
    return out


def ratio_rows(results, runtimes):
    """(model, runtime, variant, MACs ratio, latency ratio, quotient) against the dense model at the same precision."""
    rows = []
    for model, per_runtime in results.items():
        for runtime in runtimes:
            rep = {r.name: r for r in per_runtime[runtime].rows}
            for variant, (_, precision) in VARIANTS.items():
                base = rep.get("dense" if precision is FP32 else "dense+int8")
                if variant.startswith("dense") or variant not in rep or base is None:
                    continue
                m = rep[variant].macs / base.macs
                lat = rep[variant].p50_ms / base.p50_ms
                rows.append((model, runtime, variant, m, lat, lat / m, rep[variant].p50_ms))
    return rows


def print_tables(results, runtimes) -> dict:
    rows = ratio_rows(results, runtimes)
    print("\nfp32, pruned with the runtime's measured target (quotient = latency ratio / MACs ratio, goal <= 1.10)")
    print("| model | runtime | MACs ratio | p50 ms | latency ratio | quotient |\n|---|---|---:|---:|---:|---:|")
    for model, runtime, variant, m, lat, q, p50 in rows:
        if variant == "measured":
            print(f"| {model} | {runtime.label} | {m:.3f} | {p50:.2f} | {lat:.3f} | {q:.2f} |")
    print("\nint8 (static QDQ / pt2e), pruned with the measured int8 target, against dense int8; speed-ups")
    print("| model | runtime | MACs ratio | p50 ms | latency ratio | quotient | x pruned fp32 | x dense fp32 |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|")
    for model, per_runtime in results.items():
        for runtime in runtimes:
            rep = {r.name: r for r in per_runtime[runtime].rows}
            if not {"measured+int8", "dense+int8", "measured", "dense"} <= set(rep):
                print(f"| {model} | {runtime.label} | int8 not built (see above) | | | | | |")
                continue
            q8 = rep["measured+int8"]
            m = q8.macs / rep["dense+int8"].macs
            lat = q8.p50_ms / rep["dense+int8"].p50_ms
            print(f"| {model} | {runtime.label} | {m:.3f} | {q8.p50_ms:.2f} | {lat:.3f} | {lat / m:.2f} | "
                  f"{rep['measured'].p50_ms / q8.p50_ms:.2f} | {rep['dense'].p50_ms / q8.p50_ms:.2f} |")
    print("\nmeasured target vs none vs the fixed ort-x86 rule (fp32 p50 ms; MACs ratio in brackets)")
    print("| model | runtime | measured | none | ort-x86 | measured fastest (1% noise) |\n|---|---|---:|---:|---:|---|")
    for model, per_runtime in results.items():
        for runtime in runtimes:
            rep = {r.name: r for r in per_runtime[runtime].rows}
            dense = rep["dense"].macs
            cells = [f"{rep[v].p50_ms:.2f} ({rep[v].macs / dense:.3f})" for v in ("measured", "none", "ort-x86")]
            ok = rep["measured"].p50_ms <= 1.01 * min(rep["none"].p50_ms, rep["ort-x86"].p50_ms)
            same = rep["measured"].macs == rep["none"].macs == rep["ort-x86"].macs
            verdict = ("yes" if ok else "NO") + (" (equal MACs: likely the same widths, the gap is noise)" if same else "")
            print(f"| {model} | {runtime.label} | {' | '.join(cells)} | {verdict} |")
    return {"rows": [dict(zip(("model", "runtime", "variant", "macs_ratio", "latency_ratio", "quotient", "p50_ms"),
                                (m, r.value, v, a, b, c, d))) for m, r, v, a, b, c, d in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2,densenet121,vit_tiny")
    parser.add_argument("--runtimes", default="ort,openvino,executorch")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=25,
                        help="interleaved rounds (2 runs per variant per round by default: a slow spell of this "
                             "shared machine then lands on every variant, not on one variant's block of runs)")
    parser.add_argument("--min-cosine", type=float, default=0.9,
                        help="int8 vs fp32 floor on the random calibration batches (timing only)")
    parser.add_argument("--counts", help="channel grid for calibration (default: each runtime's default grid)")
    parser.add_argument("--json")
    parser.add_argument("--plot")
    args = parser.parse_args()
    runtimes = parse_runtimes(args.runtimes)
    counts = tuple(int(c) for c in args.counts.split(",")) if args.counts else None
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    print(header(runtimes))
    print(f"command: python {' '.join(sys.argv)}")
    print("calibrated targets:")
    targets = targets_of(runtimes, counts)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.models.split(","):
            results[name] = run_model(name, args.ratio, runtimes, targets, args, work)
    data = print_tables(results, runtimes)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    reports = [rep for per in results.values() for rep in per.values()]
    if args.plot:
        timing.plot_latency_vs_macs(reports, args.plot)
    if args.json:
        data.update(header=header(runtimes), targets={f"{r.value}/{p.value}": t.name for (r, p), t in targets.items()},
                    reports=[rep.to_json() for rep in reports])
        write_atomically(args.json, lambda f: f.write(json.dumps(data, indent=1).encode()))


if __name__ == "__main__":
    main()
