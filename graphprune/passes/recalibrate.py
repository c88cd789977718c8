"""RecalibrateBatchNorm: re-estimate BatchNorm running statistics on calibration batches (no training).

Pruning changes what flows into each BatchNorm only through removed channels' consumers,
but a model that was pruned by a criterion with no zeroing guarantee (or after several
steps) drifts; resetting the statistics and averaging them over the batches
(momentum=None: a cumulative mean) restores them. Only BN layers switch to train mode;
no parameter changes and no gradient is computed.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.fx as fx

from ..batch import calibration_run
from ..modes import modes_of, restore_modes
from .base import GraphPass, PassResult


@contextlib.contextmanager
def reestimating_batchnorm(module: torch.nn.Module) -> Iterator[bool]:
    """Inside: `module` in eval mode except its tracking BatchNorms, which are reset and average every batch run
    (momentum None, a cumulative mean); yields whether there is any. After: modes and momenta restored."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    modes, saved = modes_of(module), [(m, m.momentum) for m in norms]
    module.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            yield bool(norms)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        restore_modes(modes)


class RecalibrateBatchNorm(GraphPass):
    def __init__(self, example_inputs, calibration):
        super().__init__(example_inputs)
        self.calibration = calibration

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        n_inputs = sum(1 for n in graph_module.graph.nodes if n.op == "placeholder")
        with reestimating_batchnorm(graph_module) as any_norm:
            if not any_norm:
                return PassResult(graph_module, False)
            for k, batch in enumerate(self.calibration):
                with calibration_run(graph_module, f"calibration batch {k} (recalibrate_bn)", batch[:n_inputs]):
                    graph_module(*batch[:n_inputs])
        return PassResult(graph_module, True)
