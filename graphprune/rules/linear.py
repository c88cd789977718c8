"""Linear layers, in every spelling: nn.Linear, F.linear and aten.linear (y = x W^T + b), and aten.mm/addmm
with a parameter operand (y = a W or b + a W, W a parameter or its transpose), as torch.export spells
linear layers and Hugging Face's Conv1D.

x's last dim is the weight's contracted dim (CONSUMER); the output's last dim is its other dim
(PRODUCER) and the bias's. MACs: numel(y) * in_features, scaling with both last dims. A
computed weight (not a parameter) freezes the channels it touches; mm of two activations is a
matrix product (`MatMulRule`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..groups import Coupling, Effect, Role
from ..standins import zeros_for
from .attention import MatMulRule
from .base import AnalysisContext, GraphView, LayerKind, MacTerm, Rule, ShrinkContext, WeightedLayer, describe_node
from .base import freeze_inputs
from .callsite import Operand, arg, channel_factor, given

A = torch.ops.aten
_TRANSPOSES = (A.t.default, A.permute.default, A.transpose.int)


@dataclass(frozen=True)
class LinearCall:
    """One linear call site: x (..., in) times weight, whose dim `weight_in` is the contracted one."""

    x: fx.Node
    weight: Operand
    bias: Operand | None
    weight_in: int = 1


def linear_couplings(ctx: AnalysisContext, node: fx.Node, c: LinearCall) -> tuple[Coupling, ...]:
    x_slot = ctx.input_slot(c.x, len(ctx.shape(c.x)) - 1)
    out = ctx.output_slot(node, len(ctx.shape(node)) - 1)
    couplings = [Coupling(x_slot, c.weight.slot(ctx, c.weight_in, Role.CONSUMER)),
                 Coupling(out, c.weight.slot(ctx, 1 - c.weight_in, Role.PRODUCER))]
    if c.bias is not None:
        shape = c.bias.shape(ctx)
        if shape and shape[-1] > 1:  # a (1, out) or (out,) bias; a scalar one broadcasts
            couplings.append(Coupling(out, c.bias.slot(ctx, len(shape) - 1, Role.PRODUCER)))
    return tuple(couplings)


def linear_cost(node: fx.Node, view: GraphView, x: fx.Node) -> tuple[MacTerm, ...]:
    """numel(y) * in_features; scales with the output's and x's last dims where they carry channels."""
    out_dim, x_dim = len(view.shape(node)) - 1, len(view.shape(x)) - 1
    return (MacTerm(math.prod(view.shape(node)) * view.shape(x)[-1],
                    channel_factor(view, node, out_dim) + channel_factor(view, x, x_dim)),)


class LinearModule:
    """nn.Linear (and subclasses that keep its forward)."""

    def read(self, node: fx.Node, view: GraphView) -> LinearCall:
        return LinearCall(arg(node, 0, "input"), Operand.of_module(node, view, "weight"),
                          Operand.of_module(node, view, "bias"))


class LinearArguments:
    """F.linear(x, w, b) and aten.linear(x, w, b)."""

    def read(self, node: fx.Node, view: GraphView) -> LinearCall:
        return LinearCall(arg(node, 0, "input"), Operand(node=arg(node, 1, "weight")),
                          Operand.of_arg(arg(node, 2, "bias")))


class LinearRule(Rule):
    """y = x W^T + b on the last dim (module docstring), read through a `LinearModule` or `LinearArguments`."""

    reads_values = False

    def __init__(self, spelling: LinearModule | LinearArguments):
        self.spelling = spelling

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        c = self.spelling.read(node, ctx)
        if c.weight.parameter(ctx) is None:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} has a computed weight"))
        return Effect(len(ctx.shape(node)) - 1, couplings=linear_couplings(ctx, node, c))

    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        if node.op == "call_module":
            self.resize(ctx.module(node))

    def resize(self, module: nn.Module) -> nn.Module | None:
        if not isinstance(module, nn.Linear):
            return None
        module.out_features, module.in_features = module.weight.shape
        return module

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        return linear_cost(node, view, self.spelling.read(node, view).x)

    def weighted_layer(self, node: fx.Node, view: GraphView) -> WeightedLayer | None:
        weight = self.spelling.read(node, view).weight.parameter(view)
        return WeightedLayer(LayerKind.LINEAR, (weight,)) if weight is not None else None

    def stand_in(self, op, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """Zeros shaped as x W^T + b: (..., out) for x (..., in), W (out, in) and b None or (out,)."""
        module = isinstance(op, nn.Module)
        if module and (not isinstance(op, nn.Linear) or len(args) + len(kwargs) != 1):
            return None
        x = given(args, kwargs, 0, "input")
        weight, bias = (op.weight, op.bias) if module else (given(args, kwargs, 1, "weight"), given(args, kwargs, 2, "bias"))
        if not all(isinstance(t, torch.Tensor) for t in (x, weight)) or x.ndim < 1 or weight.ndim != 2 \
                or x.shape[-1] != weight.shape[1] or not (bias is None or isinstance(bias, torch.Tensor)
                                                          and bias.shape == weight.shape[:1]):
            return None
        shape = (*x.shape[:-1], weight.shape[0])
        return zeros_for(shape, math.prod(shape) * weight.shape[1], x, weight, bias)

class MmRule(MatMulRule):
    """mm(a, W) and addmm(b, a, W, beta, alpha) = beta b + alpha a W: a linear layer when W is a parameter
    (or its transpose); mm of two activations is a matrix product (MatMulRule); addmm of two is frozen."""

    reads_heads = False

    def __init__(self, has_bias: bool):
        self.has_bias = has_bias

    def _read(self, node: fx.Node, view: GraphView) -> LinearCall | None:
        """The call as a linear layer, None when W is not a 2-D parameter or its transpose."""
        bias, a, w = (node.args[0], node.args[1], node.args[2]) if self.has_bias else (None, *node.args[:2])
        transposed = w.op == "call_function" and w.target in _TRANSPOSES and isinstance(w.args[0], fx.Node)
        param = w.args[0] if transposed else w
        if view.constant(param) is None or len(view.shape(param)) != 2:
            return None
        return LinearCall(a, Operand(node=param), Operand.of_arg(bias), weight_in=1 if transposed else 0)

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        c = self._read(node, ctx)
        if c is not None:
            return Effect(1, couplings=linear_couplings(ctx, node, c))
        if self.has_bias:
            return Effect(None, freezes=freeze_inputs(node, ctx, f"{describe_node(node)} multiplies two activations"))
        return super().couple(node, ctx)

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        return linear_cost(node, view, node.args[1] if self.has_bias else node.args[0])

    def weighted_layer(self, node: fx.Node, view: GraphView) -> WeightedLayer | None:
        c = self._read(node, view)
        return WeightedLayer(LayerKind.LINEAR, (c.weight.parameter(view),)) if c is not None else None


def linear_rules() -> dict:
    """Every spelling of a linear layer -> its rule."""
    arguments = LinearRule(LinearArguments())
    return {nn.Linear: LinearRule(LinearModule()), F.linear: arguments, A.linear.default: arguments,
            A.mm.default: MmRule(has_bias=False), A.addmm.default: MmRule(has_bias=True)}
