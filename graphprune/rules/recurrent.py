"""Recurrent layers: nn.LSTM and nn.GRU (one or more layers, batch_first or not, uni- or bidirectional).

Layer l has G gates (LSTM 4: i, f, g, o; GRU 3: r, z, n), hidden size H and input size I.
Its weights are weight_ih_l{l} (G*H, I), weight_hh_l{l} (G*H, H), bias_ih_l{l} and
bias_hh_l{l} (G*H). Hidden unit j of layer l is:
    - rows j, H+j, ..., (G-1)*H+j of all four (producer: it writes the unit's gates);
    - column j of weight_hh_l{l} (consumer: the unit's state read back at the next step);
    - column j of weight_ih_l{l+1} (consumer: the next layer's input), or, for the last
      layer, the last dim of output[0], (seq, batch, H) or (batch, seq, H).
So each layer's hidden units are one channel group. Zeroing a dropped unit's two consumer
columns (and the columns of whatever reads output[0]) hides it from everything, and no kept
unit reads a dropped unit's gate rows, so removing it is exact.
A bidirectional layer has the same parameters again with the suffix `_reverse`; its output
is (forward units, reverse units), so unit j is positions j and H+j of output[0] and of the
next layer's weight_ih columns. Forward unit j and reverse unit j are one channel (the
module has one width for both directions).
The input features are the columns of weight_ih_l0 (consumer), tied to the producer of the input.

Final and initial states: h_n/c_n (output[1]) and h0/c0 (the `hx` argument) are one
(num_layers, batch, H) tensor for all layers, so their last dim ties unit j of *every*
layer together: a model that reads h_n or passes h0 prunes the same units in all layers
(exact, only coarser). A state tuple used whole (not through indexing) freezes the layer.
proj_size > 0 is frozen, with the reason recorded.

Per-layer widths: nn.LSTM/nn.GRU have one hidden_size for all layers, but each layer's units
are their own group, so a plan may keep different counts. When every layer keeps the same
count (always for one layer) the module stays an nn.LSTM/nn.GRU with `hidden_size` and
`input_size` updated; otherwise it is replaced by `PrunedLSTM`/`PrunedGRU`, a stack of
single-layer nn.LSTM/nn.GRU modules with their own widths that computes exactly what the
stacked module computes. Their states are then per-layer tuples, never read by the model.

MACs per time step, sample and layer: G * H * (I + H) (the input and recurrent
matrix-vector products; bias adds and the gates' element-wise products are not MACs).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..groups import Coupling, Effect, Freeze, Role, Slot
from .base import AnalysisContext, GraphView, MacTerm, Rule, ShrinkContext, describe_node, freeze_inputs
from .callsite import part_users, used_whole

class PrunedRecurrent(nn.Module):
    """A stack of single-layer recurrent modules, each with its own hidden size.

    Same call as the stacked module: `forward(input, hx=None) -> (output, state)`, with the
    inter-layer dropout of torch's stacked RNN. Since the widths differ, `state` (and `hx`)
    hold one entry per layer, that layer's own (directions, batch, H_l) state: a tuple of h
    (GRU), or a pair of such tuples (h, c) (LSTM).
    """

    cell: type[nn.RNNBase]

    def __init__(self, layers: list[nn.RNNBase], batch_first: bool, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.batch_first, self.dropout = batch_first, dropout
        self.bidirectional, self.proj_size = layers[0].bidirectional, 0  # as the stacked module, for its rule

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, input, hx=None):
        x, finals = input, []
        for l, layer in enumerate(self.layers):
            if l and self.dropout and self.training:
                x = F.dropout(x, self.dropout, True)
            x, state = layer(x, None if hx is None else self._layer_state(hx, l))
            finals.append(state)
        return x, self._stack_states(finals)

    def _layer_state(self, hx, l: int):
        raise NotImplementedError

    def _stack_states(self, finals: list):
        raise NotImplementedError


class PrunedLSTM(PrunedRecurrent):
    cell = nn.LSTM

    def _layer_state(self, hx, l):
        h, c = hx
        return h[l], c[l]

    def _stack_states(self, finals):
        return tuple(h for h, _ in finals), tuple(c for _, c in finals)


class PrunedGRU(PrunedRecurrent):
    cell = nn.GRU

    def _layer_state(self, hx, l):
        return hx[l]

    def _stack_states(self, finals):
        return tuple(finals)


def gates(m: nn.Module) -> int:
    """Gate count G: 4 for LSTM, 3 for GRU."""
    cell = m.cell if isinstance(m, PrunedRecurrent) else type(m)
    return 4 if issubclass(cell, nn.LSTM) else 3


def directions(m: nn.Module) -> tuple[str, ...]:
    """Parameter-name suffixes of the directions: ("",) or ("", "_reverse")."""
    return ("", "_reverse") if m.bidirectional else ("",)


def param_name(m: nn.Module, l: int, kind: str, direction: str = "") -> str:
    """Name (relative to `m`) of layer l's `kind` parameter ("weight_ih", "weight_hh", "bias_ih", "bias_hh")."""
    return f"layers.{l}.{kind}_l0{direction}" if isinstance(m, PrunedRecurrent) else f"{kind}_l{l}{direction}"


def _param(m: nn.Module, l: int, kind: str) -> torch.Tensor | None:
    return m.get_parameter(param_name(m, l, kind)) if _has_param(m, l, kind) else None


def _has_param(m: nn.Module, l: int, kind: str, direction: str = "") -> bool:
    owner, _, attr = param_name(m, l, kind, direction).rpartition(".")
    return getattr(m.get_submodule(owner) if owner else m, attr, None) is not None


def layer_sizes(m: nn.Module) -> list[tuple[int, int]]:
    """(input size I_l, hidden size H_l) of every layer of a module without projection.

    Read from the weights, so it gives the kept widths once they are sliced.
    """
    return [tuple(_param(m, l, "weight_ih").shape[1:]) + (_param(m, l, "weight_hh").shape[1],)
            for l in range(m.num_layers)]


def _steps(input_shape: tuple[int, ...], batch_first: bool) -> int:
    """seq_len * batch of an input (seq, batch, I), (batch, seq, I) with `batch_first`, or unbatched (seq, I)."""
    if len(input_shape) == 2:
        return input_shape[0]
    seq, batch = (input_shape[1], input_shape[0]) if batch_first else (input_shape[0], input_shape[1])
    return seq * batch


def recurrent_macs(module: nn.Module, input_shape: tuple[int, ...], batch_first: bool) -> int:
    """MACs of an LSTM/GRU: seq_len * batch * sum over layers of G * H_l * (I_l + H_l).

    Every weight matrix does one matrix-vector product per time step and sample, so this is
    seq_len * batch * (numel of all weight matrices), which also covers both directions of a
    bidirectional layer and the (P, H) projection of proj_size > 0.
    """
    return _steps(input_shape, batch_first) * sum(p.numel() for p in module.parameters() if p.dim() == 2)


def recurrent_mac_terms(node: fx.Node, module: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[int, tuple[Slot, ...]]]:
    """(MACs, slots they scale with) per layer and direction: G*H*I with (units, inputs), G*H*H with (units, units).

    Projected layers (never pruned) are one term that does not scale.
    """
    steps = _steps(input_shape, module.batch_first)
    if not _supported(module):
        return [(recurrent_macs(module, input_shape, module.batch_first), ())]
    g, terms = gates(module), []
    for l, (i, h) in enumerate(layer_sizes(module)):
        units = Slot(f"{node.target}.{param_name(module, l, 'weight_hh')}", 1, Role.CONSUMER)
        for d in directions(module):
            inputs = Slot(f"{node.target}.{param_name(module, l, 'weight_ih', d)}", 1, Role.CONSUMER)
            terms += [(steps * g * h * i, (units, inputs)), (steps * g * h * h, (units, units))]
    return terms


def _supported(m: nn.Module) -> bool:
    return not m.proj_size


def _call(node: fx.Node) -> tuple[fx.Node, object]:
    """(input, hx) of a call to an LSTM/GRU module."""
    values = dict(zip(("input", "hx"), node.args))
    values.update(node.kwargs)
    return values["input"], values.get("hx")


class RecurrentRule(Rule):
    """nn.LSTM / nn.GRU and their pruned stacks (see the module docstring)."""

    def cost(self, node: fx.Node, view: GraphView) -> tuple[MacTerm, ...]:
        """seq_len * batch * G * H * (I + H) per layer and direction (see recurrent_mac_terms); 0 for packed inputs."""
        x, _ = _call(node)
        if not view.is_tensor(x):
            return ()
        return tuple(MacTerm(macs, factors) for macs, factors in recurrent_mac_terms(node, view.module(node), view.shape(x)))

    def couple(self, node: fx.Node, ctx: AnalysisContext) -> Effect:
        m = ctx.module(node)
        x, hx = _call(node)
        states = self._state_tensors(node, m)
        problem = self._problem(node, m, ctx, x, hx, states)
        if problem is not None:
            return self._frozen(node, ctx, f"{describe_node(node, ctx.modules)} {problem}")
        units = self._layer_couplings(node, m, ctx)
        couplings = [c for layer in units for c in layer[1]]
        x_slot = ctx.input_slot(x, len(ctx.shape(x)) - 1)
        couplings += [Coupling(x_slot, ctx.param_slot(self._qualname(node, m, 0, "weight_ih", d), 1, Role.CONSUMER))
                      for d in directions(m)]
        last, width = units[-1][0], layer_sizes(m)[-1][1]
        for u in part_users(node, 0):
            out = ctx.output_slot(u, len(ctx.shape(u)) - 1)
            couplings.append(Coupling(last, out, *_spread(width, len(directions(m)))))
        hx_tensors = () if hx is None else (hx if isinstance(hx, (tuple, list)) else (hx,))
        state_slots = [ctx.output_slot(s, len(ctx.shape(s)) - 1) for s in states if s.users]
        state_slots += [ctx.input_slot(t, len(ctx.shape(t)) - 1) for t in hx_tensors]
        for slot in state_slots:  # one tensor for all layers: unit j of every layer is the same position
            couplings += [Coupling(slot, layer_units) for layer_units, _ in units]
        return Effect(self._out_dims(node, m, ctx), couplings=tuple(couplings))

    # -- analysis helpers -----------------------------------------------------------------
    @staticmethod
    def _qualname(node: fx.Node, m: nn.Module, l: int, kind: str, direction: str = "") -> str:
        return f"{node.target}.{param_name(m, l, kind, direction)}"

    def _layer_couplings(self, node, m, ctx) -> list[tuple[Slot, list[Coupling]]]:
        """Per layer: the slot of its hidden units (forward weight_hh columns) and the couplings of its parameters."""
        g, dirs, out = gates(m), directions(m), []
        for l, (_, h) in enumerate(layer_sizes(m)):
            units = ctx.param_slot(self._qualname(node, m, l, "weight_hh"), 1, Role.CONSUMER)
            rows, unit_of_row = np.arange(g * h), np.tile(np.arange(h), g)
            couplings = []
            for d in dirs:
                if d:  # reverse unit j is forward unit j
                    couplings.append(Coupling(units, ctx.param_slot(self._qualname(node, m, l, "weight_hh", d), 1,
                                                                    Role.CONSUMER)))
                couplings += [Coupling(units, ctx.param_slot(self._qualname(node, m, l, kind, d), 0, Role.PRODUCER),
                                       unit_of_row, rows)
                              for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if _has_param(m, l, kind, d)]
                if l + 1 < m.num_layers:
                    following = ctx.param_slot(self._qualname(node, m, l + 1, "weight_ih", d), 1, Role.CONSUMER)
                    couplings.append(Coupling(units, following, *_spread(h, len(dirs))))
            out.append((units, couplings))
        return out

    @staticmethod
    def _state_tensors(node: fx.Node, m: nn.Module) -> list[fx.Node]:
        """The getitem nodes that read h_n (and c_n) out of output[1]."""
        parts = part_users(node, 1)
        if gates(m) == 4:
            parts = [p for part in parts for k in (0, 1) for p in part_users(part, k)]
        return parts

    @staticmethod
    def _problem(node, m, ctx, x, hx, states) -> str | None:
        """Why this call cannot be pruned, or None."""
        if m.proj_size:
            return f"has proj_size={m.proj_size} (not supported: the state is projected)"
        if not ctx.is_tensor(x):
            return "is called on a PackedSequence or other non-tensor input"
        if used_whole(node):
            return "returns an (output, state) tuple that is used whole"
        if gates(m) == 4 and any(used_whole(p) for p in part_users(node, 1)):
            return "returns an (h_n, c_n) state tuple that is used whole"
        used_state = [s for s in states if s.users]
        hx_nodes = () if hx is None else (hx if isinstance(hx, (tuple, list)) else (hx,))
        if isinstance(m, PrunedRecurrent) and (used_state or hx is not None):
            return "is a stack of layers of different widths whose per-layer states are read or passed"
        if not all(ctx.is_tensor(t) for t in hx_nodes):
            return "is given an initial state graphprune cannot follow (pass h0/c0 as tensors)"
        return None

    def _frozen(self, node, ctx, reason: str) -> Effect:
        """Freeze the channels of the inputs, output[0] and the states, so every group this layer touches says why."""
        freezes = list(freeze_inputs(node, ctx, reason))
        for u in part_users(node, 0) + self._state_tensors(node, ctx.module(node)):
            if ctx.is_tensor(u) and u.users:
                freezes.append(Freeze(ctx.output_slot(u, len(ctx.shape(u)) - 1), reason))
        ctx.producer_note[node.name] = reason
        return Effect(self._out_dims(node, ctx.module(node), ctx), freezes=tuple(freezes))

    @staticmethod
    def _out_dims(node, m, ctx):
        """Channel dims of (output, state): the last dim of each tensor it returns (a pruned stack's states are tuples)."""
        out = next((len(ctx.shape(u)) - 1 for u in part_users(node, 0) if ctx.is_tensor(u)), None)
        x = _call(node)[0]
        if isinstance(m, PrunedRecurrent) or not ctx.is_tensor(x):
            return out, None
        rank = len(ctx.shape(x))  # h_n has the rank of the input: (L * directions, batch, H) or (L * directions, H)
        return out, ((rank - 1, rank - 1) if gates(m) == 4 else rank - 1)

    # -- rewrite ---------------------------------------------------------------------------
    def shrink(self, node: fx.Node, ctx: ShrinkContext) -> None:
        m = ctx.module(node)
        if not _supported(m):  # frozen by couple: nothing was sliced
            return
        sizes = layer_sizes(m)
        if isinstance(m, PrunedRecurrent):
            for layer, (i, h) in zip(m.layers, sizes):
                _set_sizes(layer, i, h)
            return
        if len({h for _, h in sizes}) == 1:
            _set_sizes(m, sizes[0][0], sizes[0][1])
            return
        parent_name, _, attr = node.target.rpartition(".")
        setattr(ctx.gm.get_submodule(parent_name) if parent_name else ctx.gm, attr, _split_layers(m, sizes))


def _spread(h: int, n_directions: int) -> tuple[np.ndarray, np.ndarray]:
    """Index maps (unit, position) of a (directions * H) dim: position k is unit k % H."""
    return np.tile(np.arange(h), n_directions), np.arange(n_directions * h)


def _set_sizes(m: nn.RNNBase, input_size: int, hidden_size: int) -> None:
    """Record the sliced widths and rebuild the flat weight list the forward reads."""
    m.input_size, m.hidden_size = input_size, hidden_size
    m._init_flat_weights()


def _split_layers(m: nn.RNNBase, sizes: list[tuple[int, int]]) -> PrunedRecurrent:
    """One single-layer module per layer of `m`, each taking over that layer's (sliced) parameters."""
    w, cls = m.weight_ih_l0, PrunedLSTM if isinstance(m, nn.LSTM) else PrunedGRU
    layers = []
    for l, (i, h) in enumerate(sizes):
        layer = cls.cell(i, h, num_layers=1, bias=m.bias, batch_first=m.batch_first, bidirectional=m.bidirectional,
                         device=w.device, dtype=w.dtype)
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            for d in directions(m):
                if _has_param(m, l, kind, d):
                    setattr(layer, f"{kind}_l0{d}", getattr(m, f"{kind}_l{l}{d}"))
        layer._init_flat_weights()
        layers.append(layer)
    pruned = cls(layers, m.batch_first, m.dropout)
    pruned.train(m.training)
    return pruned
