"""The rewrite pipeline: ShrinkChannels, EliminateDeadCode and (optionally) RecalibrateBatchNorm, in place.

Each pass checks itself in `ensures`. The passes also run inside torch.fx's PassManager;
here they are called directly, which saves the recompile PassManager does after a pass
that changed nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx

from ..groups import DependencyGraph, Slot
from ..planner import PrunePlan
from ..rules import RuleTable
from ..modes import modes_of, restore_modes
from ..copies import own_tensors
from .recalibrate import RecalibrateBatchNorm
from .shrink import EliminateDeadCode, ShrinkChannels


@dataclass(frozen=True)
class Rewritten:
    sliced_params: int  # parameters after slicing, before dead-code removal (for the report)
    timings: Mapping[str, float]  # "rewrite" (the passes' work) and "checks" (their ensures)
    kept: Mapping[Slot, np.ndarray]  # positions_kept_by_slot(graph, plan): what ShrinkChannels sliced


def rewrite_in_place(gm: fx.GraphModule, graph: DependencyGraph, plan: PrunePlan, rules: RuleTable, inputs: tuple,
                     recalibration: Sequence[tuple] = (), shared_with: torch.nn.Module | None = None) -> Rewritten:
    """Apply `plan` to `gm` (whose nodes carry recorded values); every module keeps its train/eval mode.

    `gm` need not be compiled (see copy_graph_module): it is recompiled here, once.

    `gm` may share its tensors with `shared_with` (the analysed model): shrinking never writes
    to a tensor (it binds sliced copies), so only the tensors left unsliced are copied, after
    dead code is gone and before anything could write to them. Peak memory: the analysed
    model plus the pruned one, not two full copies.
    """
    modes = modes_of(gm)
    shrink, dead_code = ShrinkChannels(graph, plan, rules, inputs), EliminateDeadCode(inputs)
    later = [RecalibrateBatchNorm(inputs, recalibration)] if recalibration else []
    modified = shrink(gm).modified
    sliced_params = sum(p.numel() for p in gm.parameters())
    modified |= dead_code(gm).modified
    if not modified:  # no pass's `ensures` compiled it
        gm.recompile()
    if shared_with is not None:
        own_tensors(gm, shared_with)
    for graph_pass in later:
        graph_pass(gm)
    restore_modes(modes)  # modules dead code removed are no longer in gm: setting their flag changes nothing
    passes = [shrink, dead_code] + later
    return Rewritten(sliced_params, {"rewrite": sum(p.timings["call"] for p in passes),
                                     "checks": sum(p.timings["ensures"] for p in passes)}, shrink.kept)
