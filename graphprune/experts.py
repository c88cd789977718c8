"""Expert pruning: remove whole experts from every mixture-of-experts layer of a copy of a model.

    prune_experts(model, n=1, calibration=[batch, ...], score=RouterLoad(), per_layer=True) -> ExpertResult

1. The MoE layers, found by structure (not by class name): a module whose children include an experts module
   (not one of torch.nn's own layers) holding fused 3-D parameters with the E experts on dim 0, and a router
   whose 2-D `weight` is (E, hidden), hidden being a dim of those parameters. The layout must be one whose experts
   are exactly dim 0 of every tensor: every tensor of the experts module a parameter (E, ...) of 2 or 3 dims,
   the router holding `weight` (E, hidden) and optionally `bias` (E,) and nothing else, neither holding
   tensors in submodules; a pair that fails this is refused, never guessed (Hugging Face's Mixtral,
   Qwen2-MoE, Qwen3-MoE, OLMoE and GPT-OSS pass). Each token goes to top_k experts: the router's `top_k`,
   else its block's, else `config.num_experts_per_tok`.
2. Each expert gets a score on the calibration batches (higher = keep):
   - RouterLoad: s_e = (1/N) sum_t sum_j w_tj [i_tj = e], the mean over the N tokens of the routing weight
     expert e receives, where (w_t, i_t) are the top-k weights and indices the router returns for token t
     (its own softmax / top-k / renormalisation); an expert never chosen scores 0. Tokens are the rows the
     router sees (batch x sequence); padding is left out when a mapping batch carries an `attention_mask`
     of one entry per row.
3. The n lowest-scoring experts of every layer are removed from a deep copy (the caller's model is
   untouched): with per_layer=True each layer removes its own lowest n; with per_layer=False every layer
   removes the same n, the lowest by the mean score over layers. n is one count for all layers because a
   config states one expert count (`num_local_experts` / `num_experts`); at least top_k experts must stay.
   The experts' parameters and the router's weight rows (and bias) keep the kept experts, in their order;
   every module or config attribute named in COUNT_NAMES that held E holds E - n.

With the removed experts never in any token's top-k, a router that renormalises over the top-k (Mixtral,
GPT-OSS, norm_topk_prob=True) gives the pruned model the dense model's routing weights, hence its outputs. One
that does not (top-k of a softmax over all E experts: Qwen2/3-MoE's and OLMoE's default) scales the kept weights
by sum_all exp(logit) / sum_kept exp(logit): the same outputs only where the removed experts' probabilities are 0.
A batch is a tuple of positional arguments or a mapping of keyword arguments of forward().
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .depth import attention_mask, count_params, lowest, run_hooked
from .errors import InputError
from .modes import evaluating

COUNT_NAMES = ("num_experts", "num_local_experts", "n_routed_experts")
"""Module and config attributes holding the expert count of a layer; each one equal to E becomes E - n."""

LOOKED_FOR = ("a module with an experts child holding fused 3-D parameters (experts, ...) and a router child whose "
              "weight is (experts, hidden), as Hugging Face's Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE and GPT-OSS "
              "write them")


@dataclass(frozen=True)
class MoELayer:
    """One mixture-of-experts layer: the qualified names of its block, router and experts; E and top-k."""

    block: str
    router: str
    experts: str
    count: int
    top_k: int


def _qualified(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _direct_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}


def _nested_tensors(module: torch.nn.Module) -> bool:
    return any(True for child in module.children() for _ in itertools.chain(child.parameters(), child.buffers()))


def _fused_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The first 3-D parameter of a module that is not one of torch.nn's own layers (a Conv1d weight is 3-D)."""
    if type(module).__module__.startswith("torch.nn"):
        return None
    return next((p for p in module.parameters(recurse=False) if p.ndim == 3), None)


def _routes_to(module: torch.nn.Module, fused: torch.Tensor) -> bool:
    """Whether `module` holds a 2-D weight (E, hidden) for the experts of `fused` (E, ., .)."""
    weight = dict(module.named_parameters(recurse=False)).get("weight")
    return (weight is not None and weight.ndim == 2 and weight.shape[0] == fused.shape[0]
            and weight.shape[1] in fused.shape[1:])


def _layout_problem(router: torch.nn.Module, experts: torch.nn.Module, count: int) -> str | None:
    """Why slicing dim 0 of every tensor of `router` and `experts` would not remove whole experts, or None."""
    params = dict(experts.named_parameters(recurse=False))
    for name, t in _direct_tensors(experts).items():
        if name not in params or t.ndim not in (2, 3) or t.shape[0] != count:
            kind = "parameter" if name in params else "buffer"
            return f"the experts' {kind} {name!r} has shape {tuple(t.shape)}, not (experts, ...) with 2 or 3 dims"
    for name, t in _direct_tensors(router).items():
        if name not in ("weight", "bias") or t.ndim != (2 if name == "weight" else 1) or t.shape[0] != count:
            return f"the router holds {name!r} of shape {tuple(t.shape)}, besides weight (experts, hidden) and bias"
    for part, module in (("router", router), ("experts module", experts)):
        if _nested_tensors(module):
            return f"the {part} holds tensors in submodules"
    return None


def _top_k(model: torch.nn.Module, block: torch.nn.Module, router: torch.nn.Module, where: str) -> int:
    config = getattr(model, "config", None)
    for value in (getattr(router, "top_k", None), getattr(block, "top_k", None),
                  getattr(config, "num_experts_per_tok", None)):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise InputError(f"{where}: cannot tell how many experts each token goes to (no int top_k on the router or its "
                     "block, no config.num_experts_per_tok); set router.top_k")


def find_moe_layers(model: torch.nn.Module) -> list[MoELayer]:
    """Every MoE layer of the model, in module order (module docstring, step 1); InputError for a pair of router
    and experts whose layout is not whole experts on dim 0, or an experts module two routers could feed."""
    layers = []
    for block_name, block in model.named_modules():
        children = dict(block.named_children())
        for experts_name, experts in children.items():
            fused = _fused_weight(experts)
            if fused is None:
                continue
            routers = [name for name, m in children.items() if name != experts_name and _routes_to(m, fused)]
            where = _qualified(block_name, experts_name)
            if len(routers) > 1:
                raise InputError(f"{where}: fused experts next to {len(routers)} modules that could be their router "
                                 f"({', '.join(routers)}); graphprune does not guess which one routes the tokens")
            if not routers:
                continue
            router = children[routers[0]]
            problem = _layout_problem(router, experts, fused.shape[0])
            if problem:
                raise InputError(f"{where} (routed by {_qualified(block_name, routers[0])}): {problem}; graphprune "
                                 "removes experts only where they are dim 0 of every tensor of the experts and the "
                                 "router (prune_graph still prunes the experts' widths)")
            layers.append(MoELayer(block_name, _qualified(block_name, routers[0]), where, int(fused.shape[0]),
                                   _top_k(model, block, router, where)))
    return layers


class ExpertScore:
    """How important each expert of each MoE layer is on calibration batches: one array of E scores per layer
    (higher = keep)."""

    def __call__(self, model: torch.nn.Module, layers: Sequence[MoELayer], calibration: Sequence) -> list[np.ndarray]:
        raise NotImplementedError


def _routing(output, layer: MoELayer) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, indices), each (tokens, top_k), from a router's (logits, top-k weights, top-k indices) output."""
    if isinstance(output, tuple) and len(output) == 3 and all(isinstance(t, torch.Tensor) for t in output):
        logits, weights, indices = output
        if (logits.shape[-1] == layer.count and weights.shape == indices.shape and weights.shape[-1] == layer.top_k
                and weights.is_floating_point() and not indices.is_floating_point()):
            return weights.reshape(-1, layer.top_k), indices.reshape(-1, layer.top_k)
    got = (f"a tuple of {len(output)}" if isinstance(output, tuple) else type(output).__name__)
    raise InputError(f"RouterLoad reads what a router returns, (logits (tokens, {layer.count}), top-{layer.top_k} "
                     f"weights, top-{layer.top_k} indices); {layer.router} returned {got}: pass score= an ExpertScore "
                     "that reads this router")


class RoutingSums:
    """Per layer: the sum over tokens of the top-k routing weight each expert receives (float64), and the token
    count; scores() = sums / tokens: RouterLoad's score."""

    def __init__(self, layers: Sequence[MoELayer]):
        self.sums = [torch.zeros(layer.count, dtype=torch.float64) for layer in layers]
        self.tokens = np.zeros(len(layers))

    def add(self, k: int, batch, weights: torch.Tensor, indices: torch.Tensor) -> None:
        mask = attention_mask(batch)
        if mask is not None and mask.numel() == weights.shape[0]:
            weights, indices = weights[mask.flatten().to(weights.device)], indices[mask.flatten().to(indices.device)]
        self.sums[k].index_add_(0, indices.flatten().cpu().long(), weights.detach().flatten().cpu().double())
        self.tokens[k] += weights.shape[0]

    def scores(self) -> list[np.ndarray]:
        return [s.numpy() / max(t, 1) for s, t in zip(self.sums, self.tokens)]


@dataclass(frozen=True)
class RouterLoad(ExpertScore):
    """Mean over calibration tokens of the top-k routing weight each expert receives (0 if never chosen)."""

    def __call__(self, model, layers, calibration):
        sums = RoutingSums(layers)

        def hook(k):
            def record(batch, module, args, output):
                sums.add(k, batch, *_routing(output, layers[k]))
            return record

        run_hooked(model, calibration, [(model.get_submodule(layer.router), hook(k)) for k, layer in enumerate(layers)])
        return sums.scores()


@dataclass(frozen=True)
class ExpertResult:
    model: torch.nn.Module  # a copy with fewer experts per MoE layer; the caller's model is untouched
    layers: tuple[str, ...]  # qualified names of the MoE blocks
    removed: tuple[tuple[int, ...], ...]  # per layer, the original indices of the removed experts
    scores: tuple[tuple[float, ...], ...]  # per layer, one per original expert (higher = more important)
    params_before: int
    params_after: int

    def summary(self) -> str:
        def row(name, gone, scores):
            return f"  {name}: " + ", ".join(f"{s:.5f}{' removed' if e in gone else ''}" for e, s in enumerate(scores))

        rows = "\n".join(row(*layer) for layer in zip(self.layers, self.removed, self.scores))
        count = len(self.scores[0])
        return (f"expert pruning of {len(self.layers)} MoE layers: {count} -> {count - len(self.removed[0])} experts "
                f"each, params {self.params_before:,} -> {self.params_after:,}\n{rows}")


def _check_request(model: torch.nn.Module, n, calibration, score) -> list[MoELayer]:
    layers = find_moe_layers(model)
    if not layers:
        raise InputError(f"{type(model).__name__} has no mixture-of-experts layer graphprune recognises: expert "
                         f"pruning looks for {LOOKED_FOR}; experts written as one module each are not recognised")
    counts = {layer.count for layer in layers}
    if len(counts) > 1:
        raise InputError(f"the MoE layers hold different expert counts {sorted(counts)}; expert pruning removes one "
                         "count from every layer, as a config states one count")
    most = min(layer.count - layer.top_k for layer in layers)
    worst = next(layer for layer in layers if layer.count - layer.top_k == most)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= most:
        room = f"give an integer in [1, {most}]" if most >= 1 else "no expert can go"
        raise InputError(f"n={n!r} experts to remove from every MoE layer: {room} ({worst.block} has {worst.count} "
                         f"experts and sends each token to top_k={worst.top_k}; at least top_k must stay)")
    if not calibration:
        raise InputError("prune_experts scores experts on data: pass calibration=[batch, ...] (each batch a tuple of "
                         "forward()'s positional arguments or a dict of its keyword arguments)")
    if not isinstance(score, ExpertScore):
        raise InputError(f"score must be RouterLoad() or another graphprune.experts.ExpertScore, got "
                         f"{type(score).__name__}")
    return layers


def _keep_experts(model: torch.nn.Module, layer: MoELayer, keep: list[int]) -> None:
    """The router's rows and the experts' dim-0 slices of the `keep` experts, in place on `model` (a copy)."""
    for module in (model.get_submodule(layer.router), model.get_submodule(layer.experts)):
        for name, p in list(module.named_parameters(recurse=False)):
            kept = p.detach().index_select(0, torch.tensor(keep, device=p.device))
            setattr(module, name, torch.nn.Parameter(kept, requires_grad=p.requires_grad))


def _recount(model: torch.nn.Module, old: int, new: int) -> None:
    """Every COUNT_NAMES attribute equal to `old` on the model's modules and their configs becomes `new`."""
    owners = list(model.modules())
    owners += list({id(c): c for m in owners if (c := getattr(m, "config", None)) is not None}.values())
    for owner in owners:
        for name in COUNT_NAMES:
            value = getattr(owner, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value == old:
                setattr(owner, name, new)


def prune_experts(model: torch.nn.Module, *, n: int, calibration: Sequence, score: ExpertScore = RouterLoad(),
                  per_layer: bool = True) -> ExpertResult:
    """Remove the `n` least important experts of every MoE layer from a copy (module docstring)."""
    layers = _check_request(model, n, calibration, score)
    with evaluating(model):
        scores = [np.asarray(s, dtype=np.float64) for s in score(model, layers, list(calibration))]
    if len(scores) != len(layers) or any(s.shape != (layer.count,) for s, layer in zip(scores, layers)):
        raise InputError(f"{type(score).__name__} gave {[s.shape for s in scores]}; an ExpertScore gives one array "
                         f"of {layers[0].count} scores per MoE layer ({len(layers)} layers)")
    shared = lowest(np.mean(scores, axis=0), n)
    removed = [lowest(s, n) if per_layer else shared for s in scores]
    pruned = copy.deepcopy(model)
    for layer, gone in zip(layers, removed):
        _keep_experts(pruned, layer, [e for e in range(layer.count) if e not in gone])
    _recount(pruned, layers[0].count, layers[0].count - n)
    return ExpertResult(pruned, tuple(layer.block for layer in layers), tuple(tuple(sorted(g)) for g in removed),
                        tuple(tuple(float(v) for v in s) for s in scores), count_params(model), count_params(pruned))
