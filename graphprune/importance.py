"""Importance criteria: one score per channel of every group, higher means more important.

A criterion is called once with all groups to score and a ScoringContext, and returns
{group id: scores}. Every criterion sees the whole group — the producing filters, their
biases and norm parameters, and the consumers' input kernels — so coupled layers are
ranked together. Scores are compared across groups (global scope) after dividing each
group's scores by their mean (planner.plan_global): a channel's global score is its score
relative to the average channel of its own group. This is what makes an attention head (one
channel summing dozens of rows and columns) comparable to an MLP hidden unit (one row and one
column): both are ranked by how they compare with their peers, independent of the group's
size, the number of weights per channel and the scale of the criterion.

- Magnitude(p):   s_c = (sum over group params P, positions i of P's slot with map(i) = c,
                  of sum |P[i, ...]|^p)^(1/p)                          (L1: p=1, L2: p=2)
- BNScale:        s_c = sum of |gamma| of the norm layers in the group (network slimming);
                  groups without a norm layer fall back to L2 magnitude.
- Taylor:         s_c = mean over calibration batches of (sum over the group's weights
                  mapping to c of w * dL/dw)^2   (first-order Taylor, Molchanov et al. 2019)
- ActivationMean: s_c = mean |a_c| over calibration batches and positions, over the
                  activations of the group that a conv/linear layer reads.
- APoZ:           s_c = 1 - (share of a_c == 0) on those activations (Hu et al. 2016).
- Wanda:          s_c = sum over the group's weight slots (P, d) whose layer input X is known,
                  of sum over the entries P[e] with position e_d mapping to c of |P[e]| * ||X_j(e)||_2,
                  where j(e) is the input feature the entry multiplies and ||X_j||_2 is that
                  feature's norm over all calibration tokens (Sun et al. 2023, per weight
                  |w_ij| ||X_j||, summed per channel). A channel's producer rows weigh each
                  input column by its input's norm; its consumer columns are weighed by the
                  channel's own activation norm. Biases and norm affine parameters do not count.
- Random(seed):   uniform random scores, the baseline.
- FlopsRegularized(base, lam): s_c / mean(s_group) - lam * macs_c / mean(macs): prefers
                  removing channels that cost many MACs.
- a plain callable(group, model) -> scores is wrapped with PerGroup.

Weights are the model's parameters: a buffer that a layer reads as its weight (timm's anti-aliasing blur filter,
`F.conv2d(x, self.filt, groups=c)`) is sliced with its channels but carries no importance.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx

from .batch import calibration_run
from .errors import InputError
from .groups import ChannelGroup, DependencyGraph, Role, Slot
from .magnitudes import WEIGHT_ROLES, accumulate, per_position, position_sums
from .modes import evaluating
from .trace import capture_values

_NORMS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)


@dataclass(frozen=True)
class ScoringContext:
    """What criteria may read: the traced unpruned model, calibration batches, a loss, MAC costs,
    and the names of the nodes that conv/linear-like layers read (`layer_inputs`)."""

    model: fx.GraphModule
    graph: DependencyGraph
    calibration: Sequence[tuple] = ()  # batches: model inputs first, then anything the loss needs (labels)
    loss_fn: Callable | None = None  # loss_fn(output, *rest_of_batch) -> scalar tensor
    mac_cost: Callable[[ChannelGroup], np.ndarray] | None = None  # MACs that each channel of a group costs
    layer_inputs: frozenset[str] = frozenset()
    param_table: Mapping[str, torch.Tensor] | None = None  # `model`'s parameters by name, where the caller has them

    def params(self) -> Mapping[str, torch.Tensor]:
        """Qualified name -> parameter of `model` (every name of a tied one)."""
        if self.param_table is not None:
            return self.param_table
        return dict(self.model.named_parameters(remove_duplicate=False))

    def model_inputs(self, batch: tuple) -> tuple:
        n = sum(1 for node in self.model.graph.nodes if node.op == "placeholder")
        return tuple(batch[:n])

    def batches(self) -> Iterator[tuple[tuple, tuple, contextlib.AbstractContextManager]]:
        """(batch, its model inputs, a context for running the model on them) per calibration batch: a batch
        size the graph does not take is one InputError naming it (graphprune.batch.calibration_run)."""
        for k, batch in enumerate(self.calibration):
            inputs = self.model_inputs(batch)
            yield batch, inputs, calibration_run(self.model, f"calibration batch {k}", inputs)


class Criterion:
    """Base class: `needs_data` criteria require calibration batches."""

    needs_data = False

    def __call__(self, groups: Sequence[ChannelGroup], ctx: ScoringContext) -> dict[str, np.ndarray]:
        raise NotImplementedError


@dataclass(frozen=True)
class Magnitude(Criterion):
    p: int = 2

    def __call__(self, groups, ctx):
        params = ctx.params()
        sums = position_sums(groups, params, self.p)
        return {g.id: accumulate(g, params, self.p, sums=sums) ** (1.0 / self.p) for g in groups}


@dataclass(frozen=True)
class BNScale(Criterion):
    def __call__(self, groups, ctx):
        params = ctx.params()
        modules = dict(ctx.model.named_modules())
        fallback = Magnitude(2)

        def is_gamma(slot: Slot) -> bool:
            owner, _, attr = slot.name.rpartition(".")
            return attr == "weight" and isinstance(modules.get(owner), _NORMS)

        out = {}
        for g in groups:
            if any(is_gamma(s) for s in g.members):
                out[g.id] = accumulate(g, params, 1, (Role.PRODUCER,), is_gamma)
            else:
                out[g.id] = fallback([g], ctx)[g.id]
        return out


def _require_data(criterion: Criterion, ctx: ScoringContext, loss: bool = False) -> None:
    if not ctx.calibration:
        raise InputError(f"criterion {type(criterion).__name__} is data-driven: pass calibration=[batch, ...] "
                         "(each batch a tuple: the model's inputs, then e.g. labels)")
    if loss and ctx.loss_fn is None:
        raise InputError(f"criterion {type(criterion).__name__} needs loss_fn=callable(output, *rest_of_batch)")


@dataclass(frozen=True)
class Taylor(Criterion):
    needs_data = True

    def __call__(self, groups, ctx):
        _require_data(self, ctx, loss=True)
        model = ctx.model
        params = ctx.params()
        flags = {n: p.requires_grad for n, p in params.items()}
        sums = {g.id: np.zeros(g.size) for g in groups}
        with evaluating(model):
            try:
                for p in params.values():
                    p.requires_grad_(True)
                for batch, inputs, running in ctx.batches():
                    model.zero_grad(set_to_none=True)
                    with running:
                        output = model(*inputs)
                    loss = ctx.loss_fn(output, *batch[len(inputs):])
                    loss.backward()
                    products = {n: (p.detach() * p.grad) if p.grad is not None else torch.zeros_like(p)
                                for n, p in params.items()}
                    for g in groups:
                        per_channel = np.zeros(g.size)
                        for slot, index_map in g.members.items():
                            if slot.role in WEIGHT_ROLES and slot.name in products:
                                t = products[slot.name]
                                other = [d for d in range(t.ndim) if d != slot.dim]
                                summed = t.sum(dim=other) if other else t
                                per_channel += np.bincount(index_map, weights=summed.double().numpy(), minlength=g.size)
                        sums[g.id] += per_channel ** 2
            finally:
                model.zero_grad(set_to_none=True)
                for n, p in params.items():
                    p.requires_grad_(flags[n])
        return {gid: s / len(ctx.calibration) for gid, s in sums.items()}


def _consumed_activations(group: ChannelGroup, layer_inputs: frozenset[str]) -> list[Slot]:
    """Activation slots of the group that a conv/linear/attention layer reads."""
    return [slot for slot in group.members if not slot.is_param and slot.name in layer_inputs]


@dataclass(frozen=True)
class _ActivationStatistic(Criterion):
    needs_data = True

    def statistic(self, a: torch.Tensor, dim: int) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, groups, ctx):
        _require_data(self, ctx)
        slots = {g.id: _consumed_activations(g, ctx.layer_inputs) for g in groups}
        wanted = {s.name for ss in slots.values() for s in ss}
        sums = {g.id: np.zeros(g.size) for g in groups}
        with evaluating(ctx.model):
            with torch.no_grad():
                for _, inputs, running in ctx.batches():
                    with running:
                        values = capture_values(ctx.model, inputs, wanted)
                    for g in groups:
                        for slot in slots[g.id]:
                            per_position = self.statistic(values[slot.name], slot.dim).double().numpy()
                            counts = np.bincount(g.members[slot], minlength=g.size)
                            sums[g.id] += np.bincount(g.members[slot], weights=per_position, minlength=g.size) / np.maximum(counts, 1)
        out = {}
        for g in groups:
            n = max(1, len(slots[g.id])) * len(ctx.calibration)
            out[g.id] = sums[g.id] / n if slots[g.id] else Magnitude(2)([g], ctx)[g.id]
        return out


def _reduce_all_but(t: torch.Tensor, dim: int, fn) -> torch.Tensor:
    return fn(t.movedim(dim, 0).reshape(t.shape[dim], -1).float(), 1)


@dataclass(frozen=True)
class ActivationMean(_ActivationStatistic):
    def statistic(self, a, dim):
        return _reduce_all_but(a.abs(), dim, torch.mean)


@dataclass(frozen=True)
class APoZ(_ActivationStatistic):
    """Score 1 - average percentage of zeros: a channel that never activates scores 0."""

    def statistic(self, a, dim):
        return 1.0 - _reduce_all_but((a == 0), dim, torch.mean)


@dataclass(frozen=True)
class LayerRead:
    """A weight `weight` multiplies the activation slot `reads` along its own input dim `weight_dim`
    (position i of that dim meets position i of the activation's channel dim)."""

    weight: str
    weight_dim: int
    reads: Slot


def _readers(model: fx.GraphModule, weight: str) -> list[fx.Node]:
    """The nodes that read parameter `weight`: users of its get_attr node (export), or the module call (fx)."""
    owner, _, _ = weight.rpartition(".")
    readers = []
    for node in model.graph.nodes:
        if node.op == "get_attr" and node.target == weight:
            readers.extend(node.users)
        elif node.op == "call_module" and node.target == owner:
            readers.append(node)
    return readers


def layer_reads(model: fx.GraphModule, graph: DependencyGraph, layer_inputs: frozenset[str]) -> dict[str, LayerRead]:
    """For each weight with an input-feature (CONSUMER) slot, the layer input it multiplies.

    Read from the dependency graph: the weight's CONSUMER slot and the layer's input activation
    are tied in one group with the same index map. Weights read by several layers on different
    inputs, or whose input cannot be found this way, are left out.
    """
    consumer = {}
    for g in graph.groups:
        for slot in g.members:
            if slot.role is Role.CONSUMER:
                consumer.setdefault(slot.name, []).append((slot, g))
    found = {}
    for weight, slots in consumer.items():
        if len(slots) != 1:
            continue
        slot, group = slots[0]
        inputs = {a.name for r in _readers(model, weight) for a in r.all_input_nodes if a.name in layer_inputs}
        candidates = {m for m in group.members if m.role is Role.ACTIVATION and m.name in inputs
                      and np.array_equal(group.members[m], group.members[slot])}
        if len(candidates) == 1:
            found[weight] = LayerRead(weight, slot.dim, candidates.pop())
    return found


@dataclass(frozen=True)
class Wanda(Criterion):
    """|W| * ||X||, summed per channel (see the module docstring). Groups with no weight whose input is
    known fall back to L1 magnitude (that is Wanda with every ||X_j|| = 1)."""

    needs_data = True

    def __call__(self, groups, ctx):
        _require_data(self, ctx)
        reads = layer_reads(ctx.model, ctx.graph, ctx.layer_inputs)
        used = {s.name for g in groups for s in g.members if s.role in WEIGHT_ROLES and s.name in reads}
        norms = self.input_norms(ctx, {reads[w].reads for w in used})
        params = ctx.params()
        out = {}
        for g in groups:
            total, any_known = np.zeros(g.size), False
            for slot, index_map in g.members.items():
                if slot.role not in WEIGHT_ROLES or slot.name not in reads:
                    continue
                read = reads[slot.name]
                w = params[slot.name].detach().abs().double()
                shape = [1] * w.ndim
                shape[read.weight_dim] = -1
                weighted = w * norms[read.reads].view(shape)
                total += np.bincount(index_map, weights=per_position(weighted, slot.dim, 1), minlength=g.size)
                any_known = True
            out[g.id] = total if any_known else Magnitude(1)([g], ctx)[g.id]
        return out

    @staticmethod
    def input_norms(ctx: ScoringContext, slots: set[Slot]) -> dict[Slot, torch.Tensor]:
        """||X_j||_2 over every calibration token, per position j of each activation slot's channel dim."""
        squares = {}
        with evaluating(ctx.model):
            with torch.no_grad():
                for _, inputs, running in ctx.batches():
                    with running:
                        values = capture_values(ctx.model, inputs, {s.name for s in slots})
                    for s in slots:
                        x = values[s.name].double()
                        sq = (x.movedim(s.dim, 0).reshape(x.shape[s.dim], -1) ** 2).sum(1)
                        squares[s] = squares.get(s, 0) + sq
        return {s: sq.sqrt() for s, sq in squares.items()}


@dataclass(frozen=True)
class Random(Criterion):
    seed: int = 0

    def __call__(self, groups, ctx):
        rng = np.random.default_rng(self.seed)
        return {g.id: rng.random(g.size) for g in groups}


@dataclass(frozen=True)
class FlopsRegularized(Criterion):
    base: Criterion = field(default_factory=lambda: Magnitude(2))
    lam: float = 0.5

    @property
    def needs_data(self) -> bool:  # type: ignore[override]
        return self.base.needs_data

    def __call__(self, groups, ctx):
        base = self.base(groups, ctx)
        if ctx.mac_cost is None:
            raise InputError("FlopsRegularized needs MAC costs; call it through prune_graph")
        costs = {g.id: ctx.mac_cost(g) for g in groups}
        mean_cost = np.mean(np.concatenate(list(costs.values()))) if costs else 1.0
        return {g.id: base[g.id] / (base[g.id].mean() or 1.0) - self.lam * costs[g.id] / (mean_cost or 1.0)
                for g in groups}


@dataclass(frozen=True)
class PerGroup(Criterion):
    """Wrap a user callable(group, model) -> scores."""

    fn: Callable[[ChannelGroup, torch.nn.Module], np.ndarray]

    def __call__(self, groups, ctx):
        return {g.id: self.fn(g, ctx.model) for g in groups}


BUILTIN = MappingProxyType({
    "l1": Magnitude(1), "l2": Magnitude(2), "bn_scale": BNScale(), "taylor": Taylor(),
    "activation": ActivationMean(), "apoz": APoZ(), "wanda": Wanda(), "random": Random(0), "flops_l2": FlopsRegularized(Magnitude(2)),
})


def resolve(importance) -> Criterion:
    """A criterion from a built-in name, a Criterion, or a user callable(group, model) -> scores."""
    if isinstance(importance, str):
        if importance not in BUILTIN:
            raise InputError(f"unknown importance {importance!r}; use one of {sorted(BUILTIN)} or pass a callable(group, model)")
        return BUILTIN[importance]
    if isinstance(importance, Criterion):
        return importance
    if callable(importance):
        return PerGroup(importance)
    raise InputError(f"importance must be a name, a Criterion or a callable, got {type(importance).__name__}")


def score_groups(groups: Sequence[ChannelGroup], criterion: Criterion, ctx: ScoringContext) -> dict[str, np.ndarray]:
    """Scores for every group, checked for shape and finiteness."""
    scores = criterion(list(groups), ctx)
    for g in groups:
        s = np.asarray(scores.get(g.id), dtype=np.float64)
        if s.shape != (g.size,) or not np.isfinite(s).all():
            raise InputError(f"importance for group {g.id} must be {g.size} finite scores, got shape {s.shape}")
        scores[g.id] = s
    return scores
