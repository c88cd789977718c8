"""Pass infrastructure compatible with torch.fx's PassManager.

A pass implements `requires(gm)`, `call(gm) -> PassResult(graph_module, modified)` and
`ensures(gm)`. Our passes work in place on the GraphModule they are given (`in_place`),
and `ensures` lints the graph, recompiles it and re-runs shape recording on the example
inputs, so a broken rewrite fails inside the pass that caused it, with the pass's name.
`timings` holds the seconds of the last call's rewrite (`call`) and checks (`ensures`).
"""
from __future__ import annotations

import time

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from ..errors import RewriteError
from ..modes import evaluating
from ..trace import META_KEY, NodeFailure, record_values

__all__ = ["GraphPass", "PassResult"]


class GraphPass(PassBase):
    """Base class: subclasses implement `call`; `ensures` checks the graph and re-records shapes."""

    in_place = True

    def __init__(self, example_inputs: tuple[torch.Tensor, ...]):
        super().__init__()
        self.example_inputs = example_inputs

        self.timings: dict[str, float] = {}

    def __call__(self, graph_module: fx.GraphModule) -> PassResult:
        t0 = time.perf_counter()
        self.requires(graph_module)
        result = self.call(graph_module)
        t1 = time.perf_counter()
        if result.modified:
            self.ensures(result.graph_module)
        self.timings = {"call": t1 - t0, "ensures": time.perf_counter() - t1}
        return result

    @property
    def name(self) -> str:
        return type(self).__name__

    def requires(self, graph_module: fx.GraphModule) -> None:
        missing = [n.name for n in graph_module.graph.nodes if META_KEY not in n.meta]
        if missing:
            raise RewriteError(f"{self.name} needs recorded node values; nodes {missing[:5]} have none "
                               "(run graphprune.trace.record_values first)")

    def ensures(self, graph_module: fx.GraphModule) -> None:
        try:
            graph_module.graph.lint()
            graph_module.recompile()
            with evaluating(graph_module):
                record_values(graph_module, self.example_inputs)
            self.check(graph_module)
        except RewriteError:
            raise
        except Exception as exc:
            cause = exc.__cause__ or exc  # the model's own error, not the recorder's advice about example inputs
            failed = exc.__context__  # record_values raises while handling run_graph's NodeFailure, which names the node
            raise RewriteError(f"pass {self.name} produced an invalid graph: {type(cause).__name__}: {cause}. "
                               "This is a graphprune bug; please report it with the model.",
                               node=failed.node.name if isinstance(failed, NodeFailure) else None) from exc

    def check(self, graph_module: fx.GraphModule) -> None:
        """Extra post-conditions of a pass (raise on failure)."""
