"""What pausing the cyclic garbage collector inside prune_graph saves: a loop of prunes, collector on vs paused.

Usage: python bench/gc_pause.py [--models resnet56,resnet18,mobilenet_v2] [--prunes 10] [--rounds 2]

Each setting runs in its own fresh process, the two alternating `--rounds` times: `--prunes` calls of
`prune_graph(model, inputs, ratio=0.5, importance="l2", round_to=1)` per model, each on a freshly built
model, one torch thread, after a warm-up prune. "on" swaps gcpause.paused_gc for a context that does
nothing (prune_graph as it was before the pause); "paused" is prune_graph as it is. gc.callbacks time
every collection, inside the calls and outside them (building the next model, between calls).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import time

import torch

import graphprune
from graphprune import api
from graphprune.models import ZOO
from graphprune.timing import cpu_name


def loop(models: list[str], prunes: int, paused: bool) -> dict:
    """Prune each model `prunes` times; collections (count, ms) by generation, inside and outside the calls."""
    torch.set_num_threads(1)
    if not paused:
        api.paused_gc = contextlib.nullcontext
    warm = ZOO["resnet56"]
    graphprune.prune_graph(warm.build(), warm.example_inputs(), ratio=0.5, round_to=1)
    inside, started = [False], [0.0]
    stats = {where: {"count": [0, 0, 0], "ms": [0.0, 0.0, 0.0]} for where in ("inside", "outside")}

    def on_collection(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        where = stats["inside" if inside[0] else "outside"]
        where["count"][info["generation"]] += 1
        where["ms"][info["generation"]] += (time.perf_counter() - started[0]) * 1e3

    gc.callbacks.append(on_collection)
    prune_s, t0 = 0.0, time.perf_counter()
    for name in models:
        for _ in range(prunes):
            model, inputs = ZOO[name].build(), ZOO[name].example_inputs()
            inside[0], t1 = True, time.perf_counter()
            graphprune.prune_graph(model, inputs, ratio=0.5, importance="l2", round_to=1)
            prune_s += time.perf_counter() - t1
            inside[0] = False
    return {"loop_s": time.perf_counter() - t0, "prune_s": prune_s, **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet56,resnet18,mobilenet_v2")
    parser.add_argument("--prunes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=("on", "paused"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.models.split(",")
    if args.child:
        print(json.dumps(loop(models, args.prunes, args.child == "paused")))
        return
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); torch {torch.__version__}; "
          f"{args.prunes} prunes of each of {', '.join(models)} per process")
    print(f"{'collector':10s}{'loop s':>8s}{'prune s':>9s}{'gen0/1/2 inside':>18s}{'ms inside':>16s}"
          f"{'gen0/1/2 outside':>19s}{'ms outside':>16s}{'GC ms total':>13s}")
    for _ in range(args.rounds):
        for mode in ("on", "paused"):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", mode, "--models", args.models,
                                  "--prunes", str(args.prunes)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            total = sum(r["inside"]["ms"]) + sum(r["outside"]["ms"])
            print(f"{mode:10s}{r['loop_s']:8.2f}{r['prune_s']:9.2f}{'/'.join(map(str, r['inside']['count'])):>18s}"
                  f"{'/'.join(f'{m:.0f}' for m in r['inside']['ms']):>16s}"
                  f"{'/'.join(map(str, r['outside']['count'])):>19s}"
                  f"{'/'.join(f'{m:.0f}' for m in r['outside']['ms']):>16s}{total:13.0f}")


if __name__ == "__main__":
    main()
