"""How long prune_graph takes, split by stage, on the largest built-in models and on a family of growing depth.

Usage: python bench/prune_speed.py [--repeats 3] [--json out/prune_speed.json] [--sensitivity-only]
       [--frontends fx,export] [--models vgg16_bn,...] [--skip-sensitivity] [--skip-depth]
Prints one table per part; each figure is the median of `repeats` runs (ratio 0.5, L2).
The sensitivity part runs `graphprune.sensitivity` on ResNet-50 over every prunable group
at 3 ratios and counts how many times the model was traced (calls of the fx tracer).
The depth family stacks DenseNet-style blocks (6 layers, growth 32, transition convs);
time per block should stay flat if every stage is linear in graph size.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn as nn

import graphprune
from graphprune.timing import cpu_name
from graphprune.models import ZOO

STAGES = ("trace", "analysis", "scoring", "planning", "rewrite", "checks", "report")
LARGEST = ("vgg16_bn", "wide_resnet50_2", "densenet121", "convnext_tiny", "vit_b_16")


class DenseStack(nn.Module):
    """`blocks` DenseNet blocks of 6 BN-ReLU-conv layers (growth 32) joined by 1x1 transitions, at 32x32."""

    def __init__(self, blocks: int, layers: int = 6, growth: int = 32, width: int = 64):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for _ in range(blocks):
            self.blocks.append(nn.ModuleList(
                nn.Sequential(nn.BatchNorm2d(width + i * growth), nn.ReLU(), nn.Conv2d(width + i * growth, growth, 3, padding=1))
                for i in range(layers)))
            self.transitions.append(nn.Sequential(nn.BatchNorm2d(width + layers * growth), nn.ReLU(),
                                                  nn.Conv2d(width + layers * growth, width, 1)))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        for block, transition in zip(self.blocks, self.transitions):
            feats = [x]
            for layer in block:
                feats.append(layer(torch.cat(feats, 1)))
            x = transition(torch.cat(feats, 1))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def time_prune(model, inputs, repeats: int, frontend: str = "auto") -> dict:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = graphprune.prune_graph(model, inputs, ratio=0.5, frontend=frontend)
        total = time.perf_counter() - t0
        runs.append({**{s: result.timings.get(s, 0.0) for s in STAGES}, "total": total})
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def table(rows: list[tuple[str, dict]], extra: str | None = None) -> str:
    head = f"{'model':18s}" + "".join(f"{s:>9s}" for s in STAGES) + f"{'total s':>9s}" + (f"{extra:>12s}" if extra else "")
    lines = [head]
    for name, t in rows:
        line = f"{name:18s}" + "".join(f"{t[s]:9.3f}" for s in STAGES) + f"{t['total']:9.3f}"
        if extra:
            line += f"{t[extra]:12.3f}"
        lines.append(line)
    return "\n".join(lines)


class TraceCounter:
    """Counts calls of the fx tracer while active (wraps LeafTracer.trace; restored on exit)."""

    def __enter__(self):
        from graphprune import trace as trace_mod
        self.cls, self.original, self.calls = trace_mod.LeafTracer, trace_mod.LeafTracer.trace, 0

        def counted(tracer, *args, **kwargs):
            self.calls += 1
            return self.original(tracer, *args, **kwargs)
        self.cls.trace = counted
        return self

    def __exit__(self, *exc):
        self.cls.trace = self.original


def time_sensitivity(name: str = "resnet50", ratios=(0.25, 0.5, 0.75)) -> dict:
    spec = ZOO[name]
    model, inputs = spec.build(), spec.example_inputs()

    def metric(m) -> float:
        with torch.no_grad():
            return float(m(*inputs).float().std())
    with TraceCounter() as counter:
        t0 = time.perf_counter()
        table = graphprune.sensitivity(model, inputs, metric, ratios=ratios)
        seconds = time.perf_counter() - t0
    return {"model": name, "groups": len({r.group for r in table.rows}), "rows": len(table.rows),
            "traces": counter.calls, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--sensitivity-only", action="store_true", help="run only the sensitivity part")
    parser.add_argument("--frontends", default="fx,export",
                        help="comma-separated frontends timed on the largest models (fx, export, auto)")
    parser.add_argument("--models", default=",".join(LARGEST), help="comma-separated zoo models timed per frontend")
    parser.add_argument("--skip-sensitivity", action="store_true", help="skip the sensitivity part")
    parser.add_argument("--skip-depth", action="store_true", help="skip the depth family")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); torch {torch.__version__}")
    out = {"largest": {}, "depth": {}}
    if not args.skip_sensitivity:
        s = out["sensitivity"] = time_sensitivity()
        print(f"sensitivity on {s['model']}: {s['groups']} groups x 3 ratios = {s['rows']} pruned variants, "
              f"{s['traces']} trace(s), {s['seconds']:.1f} s")
    if args.sensitivity_only:
        return
    for frontend in args.frontends.split(","):
        rows = []
        for name in args.models.split(","):
            spec = ZOO[name]
            model, inputs = spec.build(), spec.example_inputs()
            graphprune.prune_graph(model, inputs, ratio=0.5, frontend=frontend)  # warm-up: imports, allocator
            out["largest"][f"{name}/{frontend}"] = time_prune(model, inputs, args.repeats, frontend)
            rows.append((name, out["largest"][f"{name}/{frontend}"]))
        print(f"\nprune_graph seconds by stage, largest built-in models, frontend {frontend} (ratio 0.5, L2, batch 1)")
        print(table(rows))
    rows = []
    for blocks in () if args.skip_depth else (1, 2, 4, 8):
        model = DenseStack(blocks).eval()
        inputs = (torch.randn(1, 3, 32, 32),)
        graphprune.prune_graph(model, inputs, ratio=0.5)
        t = time_prune(model, inputs, args.repeats)
        t["s/block"] = t["total"] / blocks
        out["depth"][blocks] = t
        rows.append((f"dense x{blocks}", t))
    if not args.skip_depth:
        print("\nDenseNet-style depth family (6 layers/block, growth 32, 32x32 input)")
        print(table(rows, extra="s/block"))
        d = out["depth"]
        print(f"\n8x the depth costs {d[8]['total'] / d[1]['total']:.1f}x the time "
              f"(analysis alone {d[8]['analysis'] / d[1]['analysis']:.1f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
