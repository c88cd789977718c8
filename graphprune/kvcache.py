"""Per-token accounting of attention: the KV cache a decoder keeps per token, measured from the graph.

For every scaled_dot_product_attention node, the key and value as a cache would hold them are
the tensors entering attention, before any grouped-query repeat (repeat_kv's unsqueeze ->
expand -> clone -> reshape is walked back to the smallest tensor of the same rank). With k of
shape (n, kv_heads, L, head_dim) and tokens = n * L:

    KV bytes per token = sum over layers (numel(k) + numel(v)) / tokens * bytes per element
                       = 2 x layers x kv_heads x head_dim x bytes      (when k and v agree)

Measured on a graph's recorded values (before: the analysed graph; after: the rewritten one),
and predicted for a plan from the kept share of each cached tensor's heads dim.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.fx as fx
import torch.nn.functional as F

from .cost import kept_share
from .errors import InputError
from .groups import DependencyGraph, Slot
from .planner import PrunePlan
from .trace import TensorMeta, value_meta

A = torch.ops.aten
_ATTENTION = (A.scaled_dot_product_attention.default, F.scaled_dot_product_attention)
_REPEAT = (A.view.default, A._unsafe_view.default, A.reshape.default, A.clone.default, A.expand.default,
           A.unsqueeze.default)


@dataclass(frozen=True)
class CachedTensor:
    """One key or value as cached: its node, heads and head_dim, and bytes per token."""

    node: str
    heads_dim: int  # the dim of `node` that holds the heads (rank - 3)
    heads: int
    head_dim: int
    bytes_per_token: int


@dataclass(frozen=True)
class AttentionLayer:
    """One attention op: its query heads and its cached key and value."""

    node: str
    query_heads: int
    key: CachedTensor
    value: CachedTensor

    @property
    def bytes_per_token(self) -> int:
        return self.key.bytes_per_token + self.value.bytes_per_token


def _cached(node: fx.Node) -> fx.Node:
    """The smallest tensor of `node`'s rank on its repeat_kv chain (`node` itself when there is none)."""
    rank = len(value_meta(node).shape)
    best, n = node, node
    while n.op == "call_function" and n.target in _REPEAT and isinstance(n.args[0], fx.Node):
        n = n.args[0]
        v = value_meta(n)
        if isinstance(v, TensorMeta) and len(v.shape) == rank and _numel(v) < _numel(value_meta(best)):
            best = n
    return best


def _numel(v: TensorMeta) -> int:
    out = 1
    for s in v.shape:
        out *= s
    return out


def _cached_tensor(node: fx.Node) -> CachedTensor:
    n = _cached(node)
    v = value_meta(n)
    tokens = v.shape[0] * v.shape[-2] if len(v.shape) >= 3 else 1
    size = torch.empty((), dtype=v.dtype).element_size()
    return CachedTensor(n.name, len(v.shape) - 3, v.shape[-3], v.shape[-1], _numel(v) * size // max(tokens, 1))


def attention_layers(gm: fx.GraphModule) -> tuple[AttentionLayer, ...]:
    """Every scaled_dot_product_attention of `gm` (nodes carry recorded values), in graph order."""
    layers = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _ATTENTION:
            q, k, v = node.args[:3]
            shape = value_meta(q).shape
            if len(shape) < 3:
                continue
            layers.append(AttentionLayer(node.name, shape[-3], _cached_tensor(k), _cached_tensor(v)))
    return tuple(layers)


def query_tokens(gm: fx.GraphModule) -> int:
    """Tokens the example inputs carry (batch x query length of the first attention), 0 without attention."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _ATTENTION:
            shape = value_meta(node.args[0]).shape
            return shape[0] * shape[-2] if len(shape) >= 3 else 0
    return 0


def predict_kv_bytes(layers: tuple[AttentionLayer, ...], graph: DependencyGraph, plan: PrunePlan) -> int:
    """KV bytes per token once `plan` is applied: each cached tensor scales with its kept heads."""
    total = 0
    for layer in layers:
        for t in (layer.key, layer.value):
            share = kept_share(graph, plan, Slot(t.node, t.heads_dim))
            total += t.bytes_per_token if share is None else t.bytes_per_token * share[0] // share[1]
    return total



@contextmanager
def cache_off(*models) -> Iterator[None]:
    """Within: every Hugging Face config of `models` (their own and their submodules', e.g. a text config) says
    use_cache=False, so forward returns no KV cache and the graph has only tensors to follow; on exit each
    config says again what it said. A cache never changes what the model computes, only what it returns."""
    configs = {id(c): c for model in models for m in _modules(model)
               if getattr(c := _config(m), "use_cache", False) is True}
    for config in configs.values():
        config.use_cache = False
    try:
        yield
    finally:
        for config in configs.values():
            config.use_cache = True


def _modules(model) -> Iterator:
    return model.modules() if isinstance(model, torch.nn.Module) else iter(())


def _config(module: torch.nn.Module) -> Any:
    """`module.config`, None where it has none, asked only of a module that holds one or whose class defines one:
    nn.Module.__getattr__ raises and formats an AttributeError for every other (0.2 ms over resnet56's modules)."""
    return getattr(module, "config", None) if "config" in module.__dict__ or hasattr(type(module), "config") else None


def check_no_kv_cache(model, kwargs, error: Exception) -> None:
    """InputError when a model that failed to export was asked for its KV cache (`use_cache=True` passed)."""
    if (kwargs or {}).get("use_cache"):
        raise InputError(f"{type(model).__name__} was called with use_cache=True, so it returns its KV cache, which "
                         "graphprune cannot trace (and whose shape would be part of the contract); leave use_cache "
                         "out of example_kwargs (graphprune analyses with the cache off and the pruned model keeps "
                         "its config's use_cache)") from error
