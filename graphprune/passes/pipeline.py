"""The rewrite pipeline: ShrinkChannels, EliminateDeadCode and (optionally) RecalibrateBatchNorm, in place.

Each pass checks itself in `ensures`. The passes also run inside torch.fx's PassManager;
here they are called directly, which saves the recompile PassManager does after a pass
that changed nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch.fx as fx

from ..groups import DependencyGraph
from ..planner import PrunePlan
from ..rules import RuleTable
from .recalibrate import RecalibrateBatchNorm
from .shrink import EliminateDeadCode, ShrinkChannels


@dataclass(frozen=True)
class Rewritten:
    sliced_params: int  # parameters after slicing, before dead-code removal (for the report)
    timings: Mapping[str, float]  # "rewrite" (the passes' work) and "checks" (their ensures)


def rewrite_in_place(gm: fx.GraphModule, graph: DependencyGraph, plan: PrunePlan, rules: RuleTable, inputs: tuple,
                     recalibration: Sequence[tuple] = ()) -> Rewritten:
    """Apply `plan` to `gm` (whose nodes carry recorded values); the train/eval mode of `gm` is kept."""
    training = gm.training
    shrink = ShrinkChannels(graph, plan, rules, inputs)
    later = [EliminateDeadCode(inputs)] + ([RecalibrateBatchNorm(inputs, recalibration)] if recalibration else [])
    shrink(gm)
    sliced_params = sum(p.numel() for p in gm.parameters())
    for graph_pass in later:
        graph_pass(gm)
    gm.train(training)
    passes = [shrink] + later
    return Rewritten(sliced_params, {"rewrite": sum(p.timings["call"] for p in passes),
                                     "checks": sum(p.timings["ensures"] for p in passes)})
