"""The checkpoint's model on the meta device (shapes, no weights), its tensor names, and the config of a pruned one.

A pruned config is one for which the class builds, on the meta device, exactly the pruned tensor shapes AND
whose captured graph's attention nodes have the queries, scales and outputs of the pruned graph's. Shapes
alone can be ambiguous (2 heads of 8 and 4 heads of 4 give the same weights); a query's
batch x heads x tokens x head size is not. No weight is needed for either check.
"""
from __future__ import annotations

import copy
from typing import Iterator, Mapping

import torch
import torch.fx as fx

from ..hfconfig import config_trials
from ..errors import GraphPruneError, InputError
from ..frontends import export_graph
from ..trace import value_meta
from .source import Checkpoint

SEQUENCE = 8  # tokens of the meta example input
BATCH = 2  # a batch of 2 is exported once (a batch of 1 is exported twice, see frontends.torch_export)


def model_class(config) -> type:
    """The class the checkpoint was saved from (config.architectures[0]), else what AutoModelForCausalLM (then
    AutoModel) builds from the config."""
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if isinstance(cls, type):
            return cls
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        try:
            with torch.device("meta"):
                return type(auto.from_config(config))
        except ValueError:  # no such model for this config
            continue
    raise InputError(f"transformers has no model class for {type(config).__name__}; set `architectures` in config.json")


def load_config(checkpoint: Checkpoint):
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(checkpoint.path)
    except Exception as exc:  # transformers raises many types for an unknown or broken config
        raise InputError(f"transformers cannot read {checkpoint.path}/config.json: {type(exc).__name__}: {exc}") from exc


def build_meta(cls: type, config) -> torch.nn.Module | None:
    """`cls(config)` on the meta device, in eval mode; None when the class refuses the config."""
    try:
        with torch.device("meta"):
            return cls(config).eval()
    except Exception:  # a field combination the class refuses (e.g. hidden % heads != 0)
        return None


def open_model(src) -> tuple[Checkpoint, object, type, torch.nn.Module]:
    """(checkpoint, config, model class, the model on the meta device) of the checkpoint directory `src`."""
    checkpoint = Checkpoint.open(src)
    config = load_config(checkpoint)
    cls = model_class(config)
    meta = build_meta(cls, config)
    if meta is None:
        raise InputError(f"{cls.__name__} cannot be built from {checkpoint.path}/config.json on the meta device")
    return checkpoint, config, cls, meta


def example_inputs(config) -> tuple[torch.Tensor]:
    """Token ids on the meta device: what every causal LM and encoder takes."""
    limit = getattr(config, "max_position_embeddings", None) or SEQUENCE
    return (torch.zeros(BATCH, min(SEQUENCE, limit), dtype=torch.long, device="meta"),)


def alias_names(module: torch.nn.Module) -> dict[str, str]:
    """Every parameter/buffer name -> the first name of the same tensor (a tied weight's names share one)."""
    first: dict[int, str] = {}
    return {name: first.setdefault(id(t), name)
            for name, t in [*module.named_parameters(remove_duplicate=False),
                            *module.named_buffers(remove_duplicate=False)]}


def checkpoint_keys(aliases: Mapping[str, str], checkpoint: Checkpoint) -> dict[str, str]:
    """Model tensor name -> the checkpoint key holding it (a tied weight is stored under one of its names)."""
    stored = {aliases[k]: k for k in checkpoint.shapes if k in aliases}
    return {name: stored[first] for name, first in aliases.items() if first in stored}


ATTENTION = (torch.ops.aten.scaled_dot_product_attention.default,
             torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default)


def _shown(value) -> str:
    return repr(value_meta(value)) if isinstance(value, fx.Node) else repr(value)


def signature(gm: fx.GraphModule) -> list[tuple]:
    """What must agree for a config to compute as the pruned graph beyond its weight shapes: per attention node,
    in order, its query, its other constant arguments (the scale) and its output, i.e. batch x heads x tokens x
    head size; without attention nodes, every call node's op and value."""
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in ATTENTION]
    if not nodes:
        return [(str(n.target), _shown(n)) for n in gm.graph.nodes if n.op in ("call_function", "call_module")]
    return [(str(n.target), _shown(n.args[0]), tuple(_shown(a) for a in n.args[3:] if not isinstance(a, fx.Node)),
             repr(sorted(n.kwargs.items(), key=str)), _shown(n)) for n in nodes]


def head_size(config) -> int | None:
    """The attention head size a config states (head_dim) or derives (hidden / heads); None without heads."""
    stated = getattr(config, "head_dim", None)
    if isinstance(stated, int):
        return stated
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    return hidden // heads if isinstance(heads, int) and isinstance(hidden, int) and heads > 0 else None


def shaped_trials(cls: type, config, changed: dict, want: dict) -> Iterator[tuple[object, torch.nn.Module]]:
    """(config, its meta model) for each of config_trials' assignments whose model has the `want`ed shapes:
    those keeping the head size first (graphprune removes whole heads), the others once every trial is seen;
    each is still to be checked (an export per check: minutes at 8B)."""
    later = []
    for values in config_trials(cls, config, changed, want):
        trial = copy.deepcopy(config)
        for key, value in values.items():
            setattr(trial, key, value)
        meta = build_meta(cls, trial)
        if meta is None or {k: tuple(v.shape) for k, v in meta.state_dict().items()} != want:
            continue
        if head_size(trial) == head_size(config):
            yield trial, meta
        else:
            later.append(trial)
    for trial in later:
        yield trial, build_meta(cls, trial)


def pruned_config(cls: type, config, source: torch.nn.Module, pruned: fx.GraphModule):
    """A copy of `config` whose model has the shapes and graph of `pruned` (source: the unpruned meta model)."""
    aliases = alias_names(source)
    shapes = {aliases.get(k, k): tuple(v.shape) for k, v in [*pruned.named_parameters(remove_duplicate=False),
                                                            *pruned.named_buffers(remove_duplicate=False)]}
    want = {k: shapes.get(aliases.get(k, k), tuple(v.shape)) for k, v in source.state_dict().items()}
    changed = {k: (tuple(v.shape), want[k]) for k, v in source.state_dict().items() if tuple(v.shape) != want[k]}
    if not changed:
        return config
    target = signature(pruned)
    for trial, meta in shaped_trials(cls, config, changed, want):
        if signature(export_graph(meta, example_inputs(trial))) == target:
            return trial
    sizes = sorted({f"{o}->{n}" for old, new in changed.values() for o, n in zip(old, new) if o != n})
    raise GraphPruneError(f"no {type(config).__name__} describes the pruned model (sizes {', '.join(sizes)}): the class "
                          "derives a size pruning changed (e.g. head size = hidden / heads, so heads cannot go while "
                          "the hidden size stays), or layers differ in their counts (prune with scope='local' or "
                          "uniform_layers=True); keep such groups whole with ratios={module name or group id: 0.0} "
                          "or ignore=[module names]")
