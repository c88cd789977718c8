"""Depth pruning: remove whole repeated layers (transformer blocks) from a copy of a model.

    prune_layers(model, n=2, calibration=[batch, ...], score=BlockInfluence(), layers=None) -> DepthResult

1. The layer list: `layers` (a qualified module name), or the one nn.ModuleList whose children
   are all of one class (at least two of them); with several candidates, the one holding the most
   parameters (the encoder/decoder stack, not e.g. a list of heads).
2. Each layer gets a score on the calibration batches (higher = more important):
   - BlockInfluence: 1 - mean over tokens of cos(h_in, h_out), the cosine similarity of the
     hidden state entering and leaving the layer (Men et al. 2024, "ShortGPT"). Tokens are the
     positions of the layer's input (batch x sequence); padding is left out when the batch
     carries an `attention_mask` of shape (batch, sequence).
   - LossIncrease(loss_fn): mean over batches of loss(model with the layer skipped) - loss(model),
     where skipping makes the layer return its input unchanged.
3. The n lowest-scoring layers are removed from a deep copy (the caller's model is untouched);
   `config.num_hidden_layers` and the per-layer `config.layer_types` follow, and every
   `layer_idx` attribute inside a kept layer is renumbered to its new position (the index a
   Hugging Face KV cache uses).

A batch is a tuple of positional arguments or a mapping of keyword arguments of forward().
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .errors import InputError
from .modes import evaluating

PER_LAYER_CONFIG = ("layer_types",)
"""Config attributes holding one entry per layer; they lose the removed layers' entries."""


def call_model(model: torch.nn.Module, batch):
    """model(*batch) for a tuple, model(**batch) for a mapping, model(batch) for anything else."""
    return model(**batch) if isinstance(batch, Mapping) else model(*(batch if isinstance(batch, tuple) else (batch,)))


def run_hooked(model: torch.nn.Module, calibration, hooks, *, with_kwargs: bool = False) -> None:
    """Run every calibration batch through `model` without gradients, with forward hooks attached: `hooks` are
    (module, fn) pairs, fn called as fn(batch, module, args, [kwargs,] output) with the batch being run. The hooks
    are removed afterwards, also on error."""
    current = {}

    def bound(fn):
        return lambda *hook_args: fn(current["batch"], *hook_args)

    handles = [module.register_forward_hook(bound(fn), with_kwargs=with_kwargs) for module, fn in hooks]
    try:
        with torch.no_grad():
            for batch in calibration:
                current["batch"] = batch
                call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()


def _hidden(value) -> torch.Tensor:
    """The hidden state of a layer's input or output: the tensor itself, or the first element of a tuple."""
    return value if isinstance(value, torch.Tensor) else value[0]


def attention_mask(batch) -> torch.Tensor | None:
    """The batch's `attention_mask` of shape (batch, sequence) as booleans, when it is a mapping holding one."""
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    return mask.bool() if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None


def _token_mask(batch, hidden: torch.Tensor) -> torch.Tensor | None:
    mask = attention_mask(batch)
    return mask if mask is not None and tuple(mask.shape) == tuple(hidden.shape[:2]) else None


def _layer_input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class LayerScore:
    """How important each layer of a layer list is on calibration batches (higher = keep)."""

    def __call__(self, model: torch.nn.Module, layers: torch.nn.ModuleList, calibration: Sequence) -> np.ndarray:
        raise NotImplementedError


class InfluenceSums:
    """Per layer k: the sum over tokens of 1 - cos(h_in, h_out) (float64) and the token count; a token is a
    position of the layer's input (batch x sequence), padding left out when the batch is a mapping with an
    `attention_mask` of shape (batch, sequence). scores() = sums / counts: BlockInfluence's score."""

    def __init__(self, layers: int):
        self.sums, self.counts = np.zeros(layers), np.zeros(layers)

    def add(self, k: int, batch, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        cos = torch.nn.functional.cosine_similarity(h_in.double(), h_out.double(), dim=-1)
        mask = _token_mask(batch, cos)
        cos = cos[mask] if mask is not None else cos.flatten()
        self.sums[k] += (1.0 - cos).sum().item()
        self.counts[k] += cos.numel()

    def scores(self) -> np.ndarray:
        return self.sums / np.maximum(self.counts, 1)


@dataclass(frozen=True)
class BlockInfluence(LayerScore):
    """1 - mean cos(h_in, h_out) over calibration tokens: a layer that barely turns its input scores near 0."""

    def __call__(self, model, layers, calibration):
        sums = InfluenceSums(len(layers))

        def hook(k):
            def record(batch, module, args, kwargs, output):
                sums.add(k, batch, _layer_input(args, kwargs), _hidden(output))
            return record

        run_hooked(model, calibration, [(layer, hook(k)) for k, layer in enumerate(layers)], with_kwargs=True)
        return sums.scores()


@dataclass(frozen=True)
class LossIncrease(LayerScore):
    """mean over batches of loss_fn(output with the layer skipped, batch) - loss_fn(output, batch)."""

    loss_fn: Callable  # loss_fn(model output, batch) -> scalar tensor

    def __call__(self, model, layers, calibration):
        def loss() -> float:
            with torch.no_grad():
                return float(np.mean([float(self.loss_fn(call_model(model, b), b)) for b in calibration]))

        def skip(module, args, kwargs, output):
            h_in = _layer_input(args, kwargs)
            return h_in if isinstance(output, torch.Tensor) else (h_in, *output[1:])

        base = loss()
        scores = np.zeros(len(layers))
        for k, layer in enumerate(layers):
            handle = layer.register_forward_hook(skip, with_kwargs=True)
            try:
                scores[k] = loss() - base
            finally:
                handle.remove()
        return scores


@dataclass(frozen=True)
class DepthResult:
    model: torch.nn.Module  # a copy with fewer layers; the caller's model is untouched
    layers: str  # qualified name of the layer list
    removed: tuple[int, ...]  # original indices of the removed layers
    scores: tuple[float, ...]  # one per original layer (higher = more important)
    params_before: int
    params_after: int

    def summary(self) -> str:
        rows = "\n".join(f"  {self.layers}.{k}: {s:.5f}{'  removed' if k in self.removed else ''}"
                         for k, s in enumerate(self.scores))
        return (f"depth pruning of {self.layers}: {len(self.scores)} -> {len(self.scores) - len(self.removed)} layers, "
                f"params {self.params_before:,} -> {self.params_after:,}\n{rows}")


def repeated_layer_lists(model: torch.nn.Module) -> list[tuple[str, torch.nn.ModuleList]]:
    """(qualified name, list) of every nn.ModuleList of two or more modules of one class, in module order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, torch.nn.ModuleList) and len(m) >= 2 and len({type(c) for c in m}) == 1]


def find_layer_list(model: torch.nn.Module, layers: str | None = None) -> tuple[str, torch.nn.ModuleList]:
    """(qualified name, ModuleList) of the model's repeated layers; see the module docstring."""
    if layers is not None:
        try:
            found = model.get_submodule(layers)
        except AttributeError:
            raise InputError(f"layers={layers!r}: {type(model).__name__} has no such submodule; pass the qualified "
                             "name of its layer list, e.g. 'encoder.layer' or 'model.layers'") from None
        if not isinstance(found, torch.nn.ModuleList) or len(found) < 2:
            raise InputError(f"layers={layers!r} is a {type(found).__name__}, not an nn.ModuleList of at least two "
                             "layers; pass the qualified name of the model's layer list")
        return layers, found
    candidates = repeated_layer_lists(model)
    if not candidates:
        raise InputError(f"{type(model).__name__} has no nn.ModuleList of repeated layers of one class; depth "
                         "pruning removes whole layers of such a list (e.g. encoder.layer, model.layers); pass "
                         "layers='qualified.name' if the model keeps them elsewhere")
    return max(candidates, key=lambda c: sum(p.numel() for p in c[1].parameters()))


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _renumber(model: torch.nn.Module, layers: torch.nn.ModuleList, removed: set[int], old_count: int) -> None:
    """Keep the per-layer bookkeeping of a copy consistent with its shorter layer list."""
    for k, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = k
    config = getattr(model, "config", None)
    if config is not None:
        shorten_config(config, removed, old_count)


def shorten_config(config, removed: set[int], old_count: int) -> None:
    """`config` (in place) without the `removed` of its `old_count` layers: num_hidden_layers and every
    PER_LAYER_CONFIG list follow."""
    if getattr(config, "num_hidden_layers", None) == old_count:
        config.num_hidden_layers = old_count - len(removed)
    for name in PER_LAYER_CONFIG:
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)) and len(value) == old_count:
            setattr(config, name, type(value)(v for k, v in enumerate(value) if k not in removed))


def check_layer_count(n, name: str, count: int) -> None:
    """An InputError unless `n` is an integer in [1, count - 1] (layers to remove of the `count` of `name`)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < count:
        raise InputError(f"n={n!r} layers to remove: give an integer in [1, {count - 1}] ({name} has "
                         f"{count} layers)")


def lowest(scores: np.ndarray, n: int) -> set[int]:
    """The indices of the n lowest scores (ties: the earlier index goes first)."""
    return {int(k) for k in np.argsort(scores, kind="stable")[:n]}


def prune_layers(model: torch.nn.Module, *, n: int, calibration: Sequence, score: LayerScore = BlockInfluence(),
                 layers: str | None = None) -> DepthResult:
    """Remove the `n` least important layers of the model's layer list from a copy (module docstring)."""
    name, found = find_layer_list(model, layers)
    check_layer_count(n, name, len(found))
    if not calibration:
        raise InputError("prune_layers scores layers on data: pass calibration=[batch, ...] (each batch a tuple of "
                         "forward()'s positional arguments or a dict of its keyword arguments)")
    if not isinstance(score, LayerScore):
        raise InputError(f"score must be BlockInfluence() or LossIncrease(loss_fn), got {type(score).__name__}")
    with evaluating(model):
        scores = np.asarray(score(model, found, list(calibration)), dtype=np.float64)
    removed = lowest(scores, n)
    pruned = copy.deepcopy(model)
    old = pruned.get_submodule(name)
    kept = torch.nn.ModuleList([layer for k, layer in enumerate(old) if k not in removed])
    parent, _, attr = name.rpartition(".")
    setattr(pruned.get_submodule(parent) if parent else pruned, attr, kept)
    _renumber(pruned, kept, removed, len(old))
    return DepthResult(pruned, name, tuple(sorted(removed)), tuple(float(s) for s in scores), count_params(model),
                       count_params(pruned))
