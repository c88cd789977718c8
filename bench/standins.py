"""What stand-ins save: the analysed model recorded computing every op vs with its heavy layers standing in.

Usage: python bench/standins.py [--models resnet56,unet,...] [--repeats 11]

For each model (default: the whole zoo), one torch thread: the fx trace of a copy, then `--repeats` rounds,
each recording every node's meta once computing every op (`trace.record_values`, as graphprune did before
stand-ins) and once with stand-ins (`standins.record_shapes`), the order swapped every round; the medians
are printed, with how many layers stood in and whether every recorded meta equals the real run's. Then the
whole `prune_graph(model, inputs, ratio=0.5, importance="l2", round_to=16)`, with and without stand-ins,
alternating the same way.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import graphprune
from graphprune import analysis, standins
from graphprune.models import ZOO
from graphprune.modes import evaluating
from graphprune.timing import cpu_name
from graphprune.copies import clone_module
from graphprune.trace import META_KEY, bind_inputs, record_values, trace

RULES = graphprune.default_rules()


def alternating(repeats: int, **runs) -> dict[str, float]:
    """Median seconds of each of `runs`, called in turn, the order reversed every other round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats):
        for name in (list(runs) if i % 2 else list(runs)[::-1]):
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def recordings(name: str, repeats: int) -> tuple[dict[str, float], int, bool]:
    """Median seconds of each recording, how many layers stood in, and whether every meta equals the real run's."""
    spec = ZOO[name]
    gm = trace(clone_module(spec.build(), parameter_views=True), RULES.has_module_rule)
    example = spec.example_inputs()
    inputs = bind_inputs(gm, example if isinstance(example, tuple) else (example,))
    metas, counts = {}, []

    def real():
        record_values(gm, inputs)
        metas["real"] = {n.name: n.meta[META_KEY] for n in gm.graph.nodes}

    def stand_ins():
        counts.append(standins.record_shapes(gm, inputs, RULES.for_call))
        metas["stand-ins"] = {n.name: n.meta[META_KEY] for n in gm.graph.nodes}

    with evaluating(gm):
        real(), stand_ins()  # warm-up
        medians = alternating(repeats, real=real, stand_ins=stand_ins)
    return medians, counts[-1], metas["real"] == metas["stand-ins"]


def prunes(name: str, repeats: int) -> dict[str, float]:
    spec = ZOO[name]
    with_stand_ins = analysis.record_shapes

    def prune(record_shapes):
        analysis.record_shapes = record_shapes
        try:
            graphprune.prune_graph(spec.build(), spec.example_inputs(), ratio=0.5, importance="l2", round_to=16)
        finally:
            analysis.record_shapes = with_stand_ins

    def computing(gm, inputs, rule_of, raise_rule_errors=False):
        record_values(gm, inputs)

    prune(with_stand_ins)
    return alternating(repeats, real=lambda: prune(computing), stand_ins=lambda: prune(with_stand_ins))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; one thread; medians of {args.repeats}; "
          f"HEAVY_MACS {standins.HEAVY_MACS:,}")
    print(f"{'model':20s} {'layers stood in':>15s} {'same metas':>10s} {'record real ms':>14s} {'stand-ins ms':>12s} "
          f"{'ratio':>6s} {'prune real ms':>13s} {'stand-ins ms':>12s} {'ratio':>6s}")
    for name in args.models.split(","):
        rec, count, same = recordings(name, args.repeats)
        whole = prunes(name, args.repeats)
        print(f"{name:20s} {count:15d} {'yes' if same else 'NO':>10s} {1e3 * rec['real']:14.1f} "
              f"{1e3 * rec['stand_ins']:12.1f} {rec['stand_ins'] / rec['real']:6.2f} {1e3 * whole['real']:13.1f} "
              f"{1e3 * whole['stand_ins']:12.1f} {whole['stand_ins'] / whole['real']:6.2f}", flush=True)


if __name__ == "__main__":
    main()
