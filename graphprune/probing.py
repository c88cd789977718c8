"""Verified probing of ops without a rule: an op is treated as channel-wise only once it is shown to be.

An op y = f(x) with one tensor input x (channels on dim d) and an output of x's shape is
*channel-wise on d* if every output channel depends only on the same input channel. We
test that on the real example value of x, in float64: for a few random channel subsets S,

    f(x.index_select(d, S)) == f(x).index_select(d, S)     exactly (torch.equal).

An op that mixes channels (cumsum or flip along d, a norm over d), depends on the channel
count, changes the shape, holds per-channel parameters, or raises, fails, and its channels
stay frozen. Only an op that passes carries channels through (input and output slots
coupled, nothing to rewrite), and the analysis lists it as "probed". Nothing is assumed.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .groups import Coupling, Effect
from .modes import evaluating
from .rules import AnalysisContext, RuleTable
from .rules.base import callable_of, is_call
from .trace import capture_values

SUBSETS = 3


class ChannelProbe:
    """Probes the rule-less ops of one traced graph on its example inputs (values captured once, lazily)."""

    def __init__(self, gm: fx.GraphModule, inputs: tuple, rules: RuleTable, seed: int = 0):
        self.gm, self.inputs, self.rules, self.seed = gm, inputs, rules, seed
        self._values: dict[str, Any] | None = None

    def _value(self, node: fx.Node) -> Any:
        """The example value of `node`; the first call runs the graph once for the inputs of every rule-less op."""
        if self._values is None:
            modules = dict(self.gm.named_modules())
            rule_less = [n for n in self.gm.graph.nodes if is_call(n) and self.rules.for_node(n, modules) is None]
            with evaluating(self.gm):
                with torch.no_grad():
                    self._values = capture_values(self.gm, self.inputs,
                                                  {a.name for n in rule_less for a in n.all_input_nodes})
        return self._values.get(node.name)

    def _op(self, node: fx.Node, ctx: AnalysisContext):
        if node.op == "call_module":
            module = copy.deepcopy(ctx.module(node)).double().eval()
            return module
        return callable_of(node)

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect | None:
        """The passthrough Effect of a channel-wise op, or None if it is not shown to be one."""
        tensors = [a for a in node.all_input_nodes if ctx.is_tensor(a)]
        if len(tensors) != 1 or not ctx.is_tensor(node):
            return None
        x = tensors[0]
        d = ctx.channel_dim(x)
        if not isinstance(d, int) or ctx.shape(node) != ctx.shape(x) or ctx.shape(x)[d] < 2:
            return None
        value = self._value(x)
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            return None
        if not self._commutes(node, ctx, x, value.detach().double(), d):
            return None
        return Effect(d, couplings=(Coupling(ctx.input_slot(x, d), ctx.output_slot(node, d)),))

    def _commutes(self, node: fx.Node, ctx: AnalysisContext, x: fx.Node, value: torch.Tensor, d: int) -> bool:
        op = self._op(node, ctx)
        if op is None:
            return False

        def run(t: torch.Tensor):
            args = fx.node.map_arg(node.args, lambda a: t if a is x else a)
            kwargs = fx.node.map_arg(node.kwargs, lambda a: t if a is x else a)
            return op(*args, **kwargs)

        rng = np.random.default_rng(self.seed)
        n = value.shape[d]
        try:
            with torch.no_grad():
                full = run(value)
                if not isinstance(full, torch.Tensor) or full.shape != value.shape:
                    return False
                for size in (n // 2, max(1, n // 3), n - 1)[:SUBSETS]:
                    subset = torch.as_tensor(np.sort(rng.choice(n, size=size, replace=False)), dtype=torch.long)
                    part = run(value.index_select(d, subset))
                    if not isinstance(part, torch.Tensor) or not torch.equal(part, full.index_select(d, subset)):
                        return False
        except Exception:  # an op that cannot run on a channel subset is not channel-wise
            return False
        return True
