"""Prune every built-in model and print the README's support table (markdown).

Usage: python bench/zoo_table.py [--ratio 0.5] [--target auto]
Columns: parameters and MACs after / before (measured), share of prunable channels removed,
channel groups (frozen ones with their reasons), seconds for prune_graph (one run, after a warm-up).
"""
from __future__ import annotations

import argparse
import time

import torch

import graphprune
from graphprune.models import ZOO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--target", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(2)
    spec = ZOO["resnet56"]
    graphprune.prune_graph(spec.build(), spec.example_inputs(), ratio=args.ratio)  # warm-up
    print(f"ratio {args.ratio}, target {args.target}, local scope, L2\n")
    print("| model | params | params after | MACs after | channels removed | groups (frozen) | frozen because | prune s |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for name, spec in ZOO.items():
        model, inputs = spec.build(), spec.example_inputs()
        t0 = time.perf_counter()
        r = graphprune.prune_graph(model, inputs, ratio=args.ratio, target=args.target).report
        seconds = time.perf_counter() - t0
        reasons = sorted({reason.split(" `")[0].removesuffix(" through") for g in r.frozen_groups for reason in g.frozen_reasons})
        print(f"| {name} | {r.params_before / 1e6:.2f} M | {r.params_after / r.params_before:.1%} | "
              f"{r.macs_after / r.macs_before:.1%} | {r.removed_channels / max(1, r.prunable_channels):.1%} | "
              f"{len(r.groups)} ({len(r.frozen_groups)}) | {'; '.join(reasons)} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
