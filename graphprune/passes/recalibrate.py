"""RecalibrateBatchNorm: re-estimate BatchNorm running statistics on calibration batches (no training).

Pruning changes what flows into each BatchNorm only through removed channels' consumers,
but a model that was pruned by a criterion with no zeroing guarantee (or after several
steps) drifts; resetting the statistics and averaging them over the batches
(momentum=None: a cumulative mean) restores them. Only BN layers switch to train mode;
no parameter changes and no gradient is computed.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ..batch import calibration_run
from .base import GraphPass, PassResult


class RecalibrateBatchNorm(GraphPass):
    def __init__(self, example_inputs, calibration):
        super().__init__(example_inputs)
        self.calibration = calibration

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        norms = [m for m in graph_module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                 and m.track_running_stats]
        if not norms:
            return PassResult(graph_module, False)
        n_inputs = sum(1 for n in graph_module.graph.nodes if n.op == "placeholder")
        training = graph_module.training
        saved = [(m, m.momentum) for m in norms]
        graph_module.eval()
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None
                m.train()
            with torch.no_grad():
                for k, batch in enumerate(self.calibration):
                    with calibration_run(graph_module, f"calibration batch {k} (recalibrate_bn)", batch[:n_inputs]):
                        graph_module(*batch[:n_inputs])
        finally:
            for m, momentum in saved:
                m.momentum = momentum
            graph_module.train(training)
        return PassResult(graph_module, True)
