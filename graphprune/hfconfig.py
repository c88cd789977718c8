"""The Hugging Face config of a pruned model (`PruneResult.module`, step 5 of graphprune.eager).

A config is solved from shapes, then verified: the field values for which the model class, built from the
config on the meta device, has exactly the pruned tensor shapes; then, built for real and loaded with the
pruned tensors, the outputs it must give.

- candidates: a field of value v may take n * v / o for every dim whose size changed o -> n with o a multiple
  of v: the field itself (o = v), heads x head_dim, and fused layouts, which keep their proportions when whole
  heads or units are removed: Phi-3's qkv_proj of (heads + 2 kv_heads) x head_dim rows (a KV group goes with
  its query heads), GPT-NeoX's query_key_value of 3 x hidden, gate_up_proj of 2 x intermediate;
- a config that derives head_dim = hidden / heads (no head_dim field) keeps the head size when heads or the
  hidden size change: head_dim is set, as Hugging Face models read `getattr(config, "head_dim", ...)`;
- search: greedy climbs (the one field that makes the most tensors match, until all do), then the first
  MAX_TRIALS assignments, fewest changed fields first.

`update_config` sets the fields on the verified copy's config. `rebuild_from_config` serves a model whose code
reads its config at run time (Phi-3 splits its fused qkv_proj at config.num_attention_heads x head_dim), which
no attribute of the copy fixes: a fresh instance of the class built from the solved config and loaded with the
pruned tensors is the module, once it computes what the pruned graph computes.
"""
from __future__ import annotations

import copy
import itertools
import sys
from typing import Callable, Iterable

import torch
import torch.nn as nn

from .agreement import output_tensors

MAX_TRIALS = 64  # meta-device builds tried beyond the climbs before giving up


def hf_config(module: nn.Module):
    """The Hugging Face config of a PreTrainedModel, else None (transformers is loaded if the model is one)."""
    transformers = sys.modules.get("transformers")
    config = getattr(module, "config", None)
    if transformers is None or not isinstance(module, transformers.PreTrainedModel):
        return None
    return config if isinstance(config, transformers.PretrainedConfig) else None


def _built(cls: type, config, device: str) -> nn.Module | None:
    try:
        with torch.device(device):
            return cls(config)
    except Exception:  # a field combination the class refuses (e.g. hidden % heads != 0) is simply not it
        return None


def _options(config, changed: dict) -> dict[str, list[int]]:
    """Field -> the values it may take: n * v / o for each changed dim o -> n that is a multiple of v."""
    fields = {k: v for k, v in config.to_dict().items() if type(v) is int and v > 1}
    dims = {(o, n) for old, new in changed.values() for o, n in zip(old, new) if o != n}
    options = {}
    for key, v in fields.items():
        found = {n * v // o for o, n in dims if o % v == 0 and (n * v) % o == 0} - {v}
        if found:
            options[key] = sorted(found)
    return options


def _config_trials(config, changed: dict) -> Iterable[dict]:
    """Field assignments from `_options`, fewest changed fields first."""
    options = _options(config, changed)
    for count in range(1, len(options) + 1):
        for keys in itertools.combinations(sorted(options), count):
            for values in itertools.product(*(options[k] for k in keys)):
                yield dict(zip(keys, values))


def _pinned(config, values: dict) -> dict:
    """`values`, with head_dim set to the old hidden / heads where the config derives it and either changes."""
    derives = getattr(config, "head_dim", None) is None and all(
        isinstance(getattr(config, key, None), int) for key in ("hidden_size", "num_attention_heads"))
    if not derives or not {"hidden_size", "num_attention_heads"} & set(values):
        return values
    return {**values, "head_dim": config.hidden_size // config.num_attention_heads}


def _with(config, values: dict):
    trial = copy.deepcopy(config)
    for key, value in _pinned(config, values).items():
        setattr(trial, key, value)
    return trial


def _matching(cls: type, config, values: dict, want: dict) -> int:
    """How many tensors of `cls` built (on the meta device) from `config` with `values` have the wanted shape."""
    meta = _built(cls, _with(config, values), "meta")
    return -1 if meta is None else sum(tuple(v.shape) == want.get(k) for k, v in meta.state_dict().items())


def _climbs(cls: type, config, changed: dict, want: dict) -> Iterable[dict]:
    """Greedy searches for many changed fields at once (hidden size, heads, KV heads, MLP width...). Equal
    shapes can come from other sizes (4 heads of 4 instead of 2 heads of 8), which the check then rejects:
    so after the first climb, climb again without each field it changed, and try it with one more field."""
    options = _options(config, changed)
    first = _climb(cls, config, options, want)
    if not first:
        return
    yield first
    for key in first:
        again = _climb(cls, config, {k: v for k, v in options.items() if k != key}, want)
        if again and again != first:
            yield again
    for key, values in options.items():
        if key not in first:
            yield from ({**first, key: v} for v in values)


def _climb(cls: type, config, options: dict, want: dict) -> dict | None:
    """Change the one field (of `options`: field -> values) that makes the most tensors match, until all match;
    None when a step finds no improvement. Costs (fields) x (fields changed) meta-device builds, where the
    exhaustive search is exponential in the fields changed."""
    values, best = {}, _matching(cls, config, {}, want)
    while best < len(want):
        step = max(((_matching(cls, config, {**values, k: v}, want), k, v)
                    for k, vs in options.items() if k not in values for v in vs), default=(-1, None, None))
        if step[0] <= best:
            return None
        best, values = step[0], {**values, step[1]: step[2]}
    return values


def config_trials(cls: type, config, changed: dict, want: dict) -> Iterable[dict]:
    """The field assignments update_config tries, in its order (greedy climbs, then fewest fields first), with
    head_dim pinned where the config derives it; each is still to be checked. `changed`: {tensor: (old shape,
    new shape)}; `want`: {state_dict key: pruned shape}."""
    trials = itertools.chain(_climbs(cls, config, changed, want),
                             itertools.islice(_config_trials(config, changed), MAX_TRIALS))
    return (_pinned(config, values) for values in trials)


def _shaped_builds(module: nn.Module, config, changed: dict) -> Iterable[tuple[dict, nn.Module]]:
    """(field values, the class built from them on the CPU and loaded with `module`'s tensors), for every trial
    whose meta-device build has exactly `module`'s tensor shapes."""
    cls, state = type(module), module.state_dict()
    want = {k: tuple(v.shape) for k, v in state.items()}
    for values in config_trials(cls, config, changed, want):
        meta = _built(cls, _with(config, values), "meta")
        if meta is None or {k: tuple(v.shape) for k, v in meta.state_dict().items()} != want:
            continue
        rebuilt = _built(cls, _with(config, values), "cpu")
        rebuilt.load_state_dict(state, strict=True)
        yield _pinned(config, values), rebuilt.eval()


@torch.no_grad()
def _same_outputs(a: nn.Module, b: nn.Module, inputs: tuple, kwargs: dict) -> bool:
    """Bit-equal outputs: two instances of one class with the same tensors compute the same ops in the same
    order, so a config that is right gives exactly the verified copy's outputs. (A tolerance is not enough:
    on small random weights, 4 heads of 4 and 2 heads of 8 differed by less than 1e-6.)"""
    got, want = output_tensors(a.eval()(*inputs, **kwargs)), output_tensors(b.eval()(*inputs, **kwargs))
    return len(got) == len(want) and all(torch.equal(x, y) for x, y in zip(got, want))


def unsolved(config) -> str:
    return (f"no {type(config).__name__} (tried up to {MAX_TRIALS} field changes) rebuilds the pruned model: "
            "per-layer counts differ, or the config derives a size pruning changed (e.g. head size = hidden / heads)")


def update_config(module: nn.Module, changed: dict, check: Callable, inputs: tuple[tuple, dict]) -> str | None:
    """Set the config fields for which `type(module)(config)`, loaded with the pruned state_dict, gives the
    verified copy's outputs bit for bit on `inputs` ((args, kwargs)).

    Trials whose meta-device build has other shapes are skipped cheaply; a shape match is then built for
    real and compared, since equal shapes do not imply equal sizes (GPT-2: heads x head size); `check`
    re-verifies the copy once its config is set. Returns None when done (or when there is no HF config),
    else why no config expresses the pruned model."""
    config = hf_config(module)
    if config is None or not changed:
        return None
    for values, rebuilt in _shaped_builds(module, config, changed):
        if _same_outputs(rebuilt, module, *inputs):  # the copy passed `check`, so an equal rebuild does too
            old = {key: vars(config)[key] for key in values if key in vars(config)}
            for key, value in values.items():
                setattr(config, key, value)
            stale = _stale_counts(module, rebuilt)
            for holder, key, value, _ in stale:
                setattr(holder, key, value)
            if check(module) is None:
                return None
            for holder, key, _, was in stale:
                setattr(holder, key, was)
            for key in values:
                if key in old:
                    setattr(config, key, old[key])
                else:
                    delattr(config, key)
    return unsolved(config)


def _stale_counts(module: nn.Module, built: nn.Module) -> list[tuple[nn.Module, str, int, int]]:
    """(submodule, attribute, value in `built`, value in `module`) for every int attribute that the class built
    from the solved config derives otherwise than the pruned copy holds it: Llama's num_key_value_groups = heads /
    KV heads is read only where attention gets a mask, so the copy's forward passed with the old value, and a
    reload of the saved model would not have it."""
    twins = dict(built.named_modules())
    stale = []
    for name, sub in module.named_modules():
        twin = twins.get(name)
        if type(twin) is not type(sub):
            continue
        mine = vars(sub)
        stale += [(sub, key, value, mine[key]) for key, value in vars(twin).items()
                  if type(value) is int and type(mine.get(key)) is int and mine[key] != value]
    return stale


def rebuild_from_config(module: nn.Module, changed: dict, check: Callable) -> nn.Module | None:
    """A fresh instance of `module`'s class built from the solved config, loaded with `module`'s (pruned) tensors,
    for which `check` finds nothing wrong (it computes what the pruned graph computes); None when none does."""
    config = hf_config(module)
    if config is None or not changed:
        return None
    for _, rebuilt in _shaped_builds(module, config, changed):
        if check(rebuilt) is None:
            if getattr(module, "generation_config", None) is not None:
                rebuilt.generation_config = copy.deepcopy(module.generation_config)
            return rebuilt
    return None
