"""Rebuild the caller's own module from a pruned graph (`PruneResult.module`).

    copy = deepcopy(caller's model)                  the caller's model and config are never touched
    1. leaves      fx leaf modules a rule replaced (PrunedMultiheadAttention, PrunedLSTM ...) are taken from
                   the pruned graph; same-class leaves take the plain attributes their rule's shrink updated
    2. tensors     every parameter/buffer whose shape changed becomes the pruned graph's tensor of the same
                   qualified name (both frontends keep the caller's names); tied tensors stay tied
    3. layers      layers with a module rule (Linear, ConvNd, norms, MultiheadAttention...) take their size
                   attributes from their new weight shapes through the rule's `resize`, the one the rewrite
                   calls; Embedding and HF Conv1D, which the frontends trace through, the same way here
    4. attributes  every other module's int attribute `a == v` is matched against the sizes of the tensors the
                   module and its direct children own: if every dim of size v changed to n, a := n (certain);
                   if only some did (hidden == heads x head_dim before pruning), or `v * d` is the size of a
                   changed dim for another int attribute d (a head count, d its head size), a has a
                   candidate. Candidates are decided per (class, attribute) by verification, fewest changes
                   first: attributes the forward never reads keep their old value.
    5. config      a Hugging Face config gets the field values for which the model class built from it (on
                   the meta device) has exactly the pruned shapes, so save_pretrained/from_pretrained round-trip;
                   when no uniform config can express them, save_pretrained is disabled with the reason
    6. verify      the copy and the pruned GraphModule give the same outputs on the example inputs
                   (agreement.mismatch: torch.allclose, rtol = atol = 1e-5); otherwise EagerRebuildError names why and where.
"""
from __future__ import annotations

import copy
import enum
import itertools
import sys
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.fx as fx
import torch.nn as nn
from .agreement import call_inputs, graph_outputs, mismatch, output_tensors
from .errors import GraphPruneError
from .kvcache import cache_off
from .rules import RuleTable, default_rules

MAX_TRIALS = 64  # verifications (attributes) or meta-device builds (config) tried before giving up

_PLAIN = (int, float, bool, str, tuple, type(None))


class EagerRebuildError(GraphPruneError):
    """The caller's class cannot be rebuilt pruned; the message says why (and where in the user's code).

    The pruned model is still available as `result.model` (GraphModule) and `result.exported` (.pt2, ONNX).
    """


# -- 1 and 2: leaves and tensors ---------------------------------------------------------------------------
def _owner(root: nn.Module, qualname: str) -> tuple[nn.Module, str]:
    parent, _, attr = qualname.rpartition(".")
    return (root.get_submodule(parent) if parent else root), attr


def _has_module(root: nn.Module, name: str) -> bool:
    try:
        root.get_submodule(name)
    except AttributeError:
        return False
    return True


def adopt_leaves(module: nn.Module, gm: fx.GraphModule) -> set[str]:
    """Take the fx graph's leaf modules into `module`: a replaced class whole, a kept class's plain attributes.

    Returns the names of the modules handled (their sizes are already right)."""
    done = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or not _has_module(module, node.target):
            continue
        pruned, mine = gm.get_submodule(node.target), module.get_submodule(node.target)
        if type(pruned) is not type(mine):
            owner, attr = _owner(module, node.target)
            setattr(owner, attr, copy.deepcopy(pruned))
        else:
            for key, value in vars(pruned).items():
                if key != "training" and isinstance(value, _PLAIN) and vars(mine).get(key, value) != value:
                    setattr(mine, key, value)
        done.update(name for name, _ in module.get_submodule(node.target).named_modules(prefix=node.target))
    return done


def swap_tensors(module: nn.Module, gm: fx.GraphModule) -> dict[str, tuple[tuple, tuple]]:
    """Replace every tensor of `module` whose shape differs from the pruned graph's tensor of the same name.

    Returns {name: (old shape, new shape)}. One new tensor per old tensor, so tied tensors stay tied."""
    pruned = {**dict(gm.named_parameters(remove_duplicate=False)), **dict(gm.named_buffers(remove_duplicate=False))}
    mine = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    new_by_id = {}
    for name, old in mine:
        new = pruned.get(name)
        if new is not None and new.shape != old.shape and id(old) not in new_by_id:
            data = new.detach().clone()
            new_by_id[id(old)] = nn.Parameter(data, old.requires_grad) if isinstance(old, nn.Parameter) else data
    changed = {}
    for name, old in mine:  # every alias, also those the graph reads under another name
        if id(old) not in new_by_id:
            continue
        changed[name] = (tuple(old.shape), tuple(new_by_id[id(old)].shape))
        owner, attr = _owner(module, name)
        if isinstance(old, nn.Parameter):
            setattr(owner, attr, new_by_id[id(old)])
        else:
            owner._buffers[attr] = new_by_id[id(old)]
    return changed


# -- 3: standard layers ------------------------------------------------------------------------------------
def _hf_conv1d() -> type | None:
    """transformers' Conv1D (GPT-2), if transformers is loaded (a model using it has loaded it; importing costs ~15 s)."""
    utils = sys.modules.get("transformers.pytorch_utils")
    return getattr(utils, "Conv1D", None)


def _resize_unruled(m: nn.Module) -> bool:
    """Layers no module rule covers (the frontends trace through them): nn.Embedding and HF Conv1D."""
    conv1d = _hf_conv1d()
    if isinstance(m, nn.Embedding):
        m.num_embeddings, m.embedding_dim = m.weight.shape
    elif conv1d is not None and isinstance(m, conv1d):
        m.nx, m.nf = m.weight.shape
    else:
        return False
    return True


def resize_layers(module: nn.Module, changed: dict, skip: set[str], rules: RuleTable) -> set[str]:
    """Size attributes of the layers whose tensors changed, from their rule's `resize` (the one the rewrite calls);
    returns the names of the layers handled (a replaced layer: with everything inside it)."""
    touched = {name.rpartition(".")[0] for name in changed}
    touched |= {parent for name in touched for parent in _parents(name)}  # a layer owning a changed child
    done = set()
    for name, m in list(module.named_modules()):
        if name in skip or name not in touched or any(name.startswith(d + ".") for d in done):
            continue
        rule = rules.for_class(m)
        resized = rule.resize(m) if rule is not None else None
        if resized is None:
            if _resize_unruled(m):
                done.add(name)
            continue
        if resized is not m:
            setattr(*_owner(module, name), resized)
        done.update(n for n, _ in resized.named_modules(prefix=name))
    return done


def _parents(qualname: str) -> list[str]:
    parts = qualname.split(".")
    return [".".join(parts[:i]) for i in range(len(parts))]  # "" (the root), "a", "a.b" for "a.b.c"


# -- 4: other modules' attributes ----------------------------------------------------------------------------
class Evidence(enum.Enum):
    """Why an attribute may take a new value. SIZE: some (not all) dims of its old value changed to it.
    HEADS: attribute x d (another attribute, unchanged: a head size) was the old size of a changed dim."""

    SIZE = "size"
    HEADS = "heads"


@dataclass(frozen=True)
class Candidate:
    module: str  # qualified name
    attr: str
    value: int  # the new value tried
    evidence: Evidence

    def key(self, root: nn.Module) -> tuple:
        return type(root.get_submodule(self.module)), self.attr, self.evidence



def _dims(module: nn.Module, name: str, changed: dict) -> list[tuple[int, int]]:
    """(old, new) size of every dim of the tensors `module` and its direct children own."""
    dims = []
    for tname, t in itertools.chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False)):
        full = f"{name}.{tname}" if name else tname
        old, new = changed.get(full, (tuple(t.shape), tuple(t.shape)))
        dims += zip(old, new)
    for child_name, child in module.named_children():
        prefix = f"{name}.{child_name}" if name else child_name
        for tname, t in itertools.chain(child.named_parameters(recurse=False), child.named_buffers(recurse=False)):
            old, new = changed.get(f"{prefix}.{tname}", (tuple(t.shape), tuple(t.shape)))
            dims += zip(old, new)
    return dims


def match_attributes(module: nn.Module, changed: dict, skip: set[str]) -> tuple[dict, list[Candidate]]:
    """Size matching (module docstring, step 4): ({(module, attr): new value} certain, [Candidate] to verify)."""
    certain, candidates = {}, []
    for name, m in module.named_modules():
        if name in skip:
            continue
        dims = _dims(m, name, changed)
        if all(o == n for o, n in dims):
            continue
        ints = {k: v for k, v in vars(m).items() if type(v) is int and v > 1}
        for attr, v in ints.items():
            news = {n for o, n in dims if o == v}
            if news and v not in news and len(news) == 1:
                certain[(name, attr)] = news.pop()
                continue
            candidates += [Candidate(name, attr, n, Evidence.SIZE) for n in sorted(news - {v})]
            heads = [n // d for other, d in ints.items() if other != attr and not any(o == d != n for o, n in dims)
                     for o, n in dims if o == v * d and n != o and n % d == 0]
            candidates += [Candidate(name, attr, n, Evidence.HEADS) for n in dict.fromkeys(heads)]
    return certain, candidates


def _set_attrs(module: nn.Module, values: dict) -> dict:
    """Set {(module name, attr): value}; returns the old values."""
    old = {}
    for (name, attr), value in values.items():
        m = module.get_submodule(name)
        old[(name, attr)] = getattr(m, attr)
        setattr(m, attr, value)
    return old


# -- 5: Hugging Face config --------------------------------------------------------------------------------
def _hf_config(module: nn.Module):
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


def _config_trials(config, changed: dict) -> Iterable[dict]:
    """Field assignments to try, fewest changed fields first: a field of value v may become the new size n of
    a dim of old size v, or n / d of a dim of old size v * d, d another field or a quotient of two (head size)."""
    fields = {k: v for k, v in config.to_dict().items() if type(v) is int and v > 1}
    sizes = set(fields.values()) | {a // b for a in fields.values() for b in fields.values() if a > b and a % b == 0}
    dims = {(o, n) for old, new in changed.values() for o, n in zip(old, new) if o != n}
    options = {}
    for key, v in fields.items():
        found = {n for o, n in dims if o == v} | {n // d for o, n in dims for d in sizes if o == v * d and n % d == 0}
        if found - {v}:
            options[key] = sorted(found - {v})
    for count in range(1, len(options) + 1):
        for keys in itertools.combinations(sorted(options), count):
            for values in itertools.product(*(options[k] for k in keys)):
                yield dict(zip(keys, values))


def _with(config, values: dict):
    trial = copy.deepcopy(config)
    for key, value in values.items():
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
    options = {}
    for values in _config_trials(config, changed):
        if len(values) > 1:
            break
        ((key, value),) = values.items()
        options.setdefault(key, []).append(value)
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
    """The field assignments update_config tries, in its order (greedy climbs, then fewest fields first); each is
    still to be checked. `changed`: {tensor: (old shape, new shape)}; `want`: {state_dict key: pruned shape}."""
    return itertools.chain(_climbs(cls, config, changed, want), itertools.islice(_config_trials(config, changed),
                                                                                    MAX_TRIALS))


@torch.no_grad()
def _same_outputs(a: nn.Module, b: nn.Module, inputs: tuple, kwargs: dict) -> bool:
    """Bit-equal outputs: two instances of one class with the same tensors compute the same ops in the same
    order, so a config that is right gives exactly the verified copy's outputs. (A tolerance is not enough:
    on small random weights, 4 heads of 4 and 2 heads of 8 differed by less than 1e-6.)"""
    got, want = output_tensors(a.eval()(*inputs, **kwargs)), output_tensors(b.eval()(*inputs, **kwargs))
    return len(got) == len(want) and all(torch.equal(x, y) for x, y in zip(got, want))


def update_config(module: nn.Module, changed: dict, check, inputs: tuple[tuple, dict]) -> str | None:
    """Set the config fields for which `type(module)(config)`, loaded with the pruned state_dict, gives the
    verified copy's outputs bit for bit on `inputs` ((args, kwargs)).

    Trials whose meta-device build has other shapes are skipped cheaply; a shape match is then built for
    real and compared, since equal shapes do not imply equal sizes (GPT-2: heads x head size); `check`
    re-verifies the copy once its config is set. Returns None when done (or when there is no HF config),
    else why no config expresses the pruned model."""
    config = _hf_config(module)
    if config is None or not changed:
        return None
    cls, state = type(module), module.state_dict()
    want = {k: tuple(v.shape) for k, v in state.items()}
    trials = itertools.chain(_climbs(cls, config, changed, want),
                             itertools.islice(_config_trials(config, changed), MAX_TRIALS))
    for values in trials:
        trial = _with(config, values)
        meta = _built(cls, trial, "meta")
        if meta is None or {k: tuple(v.shape) for k, v in meta.state_dict().items()} != want:
            continue
        rebuilt = _built(cls, trial, "cpu")
        rebuilt.load_state_dict(state, strict=True)
        if _same_outputs(rebuilt, module, *inputs):  # the copy passed `check`, so an equal rebuild does too
            old = {key: getattr(config, key) for key in values}
            for key, value in values.items():
                setattr(config, key, value)
            if check(module) is None:
                return None
            for key, value in old.items():
                setattr(config, key, value)
    return (f"no {type(config).__name__} (tried up to {MAX_TRIALS} field changes) rebuilds the pruned model: "
            "per-layer counts differ, or the config derives a size pruning changed (e.g. head size = hidden / heads)")


def _refuse_save(module: nn.Module, reason: str) -> None:
    """A stale config would reload as the wrong architecture: save_pretrained raises instead."""
    def save_pretrained(*args, **kwargs):
        raise EagerRebuildError(f"save_pretrained of the pruned {type(module).__name__} is unavailable: {reason}. "
                                "Save result.exported (.pt2) or export ONNX instead.")
    module.save_pretrained = save_pretrained


# -- 6: verification ---------------------------------------------------------------------------------------
def _values(by_key: dict, keys: Iterable) -> dict:
    values = {}
    for key in keys:
        for c in by_key[key]:
            values.setdefault((c.module, c.attr), c.value)  # the first candidate per instance
    return values


def _resolve(module: nn.Module, candidates: list[Candidate], check) -> str | None:
    """Choose candidates per (class, attribute, evidence) by verification; None once the module verifies.

    Fewest changes first: an attribute is set only where the forward needs it. A candidate the check cannot
    see is never set, even when its evidence looks right: `layer_idx` x head size can equal a pruned width,
    and a KV-cache index changed that way would break generate() while every cache-less forward still agrees."""
    by_key: dict = {}
    for c in candidates:
        by_key.setdefault(c.key(module), []).append(c)
    problem = check()
    trials = itertools.chain.from_iterable(itertools.combinations(by_key, n) for n in range(1, len(by_key) + 1))
    for keys in itertools.islice(trials, MAX_TRIALS if problem is not None else 0):
        old = _set_attrs(module, _values(by_key, keys))
        if check() is None:
            problem = None
            break
        _set_attrs(module, old)
    return problem


def rebuild_module(source: nn.Module, gm: fx.GraphModule, inputs: Iterable, rules: RuleTable | None = None) -> nn.Module:
    """The caller's class, pruned as `gm`, verified on `inputs` (the graph's placeholder values); see module docstring.

    `rules`: the table the graph was analysed with (its rules' `resize` sets the standard layers' sizes)."""
    if source is None or isinstance(source, fx.GraphModule):
        raise EagerRebuildError("no eager module to rebuild: the model was given as a graph (ExportedProgram or "
                                "GraphModule); use result.model or result.exported")
    inputs = tuple(inputs)
    name = type(source).__name__
    module = copy.deepcopy(source)
    handled = adopt_leaves(module, gm)
    changed = swap_tensors(module, gm)
    handled |= resize_layers(module, changed, handled, rules or default_rules())
    certain, candidates = match_attributes(module, changed, handled)
    _set_attrs(module, certain)
    expected = graph_outputs(gm, inputs)

    def check(candidate: nn.Module) -> str | None:
        return mismatch(candidate, gm, inputs, expected)

    with cache_off(module):  # the graph was analysed without the cache; its config keeps use_cache as it was
        return _verified(module, candidates, changed, check, call_inputs(gm, inputs, source), name, source.training)


def _verified(module: nn.Module, candidates, changed: dict, check, inputs: tuple[tuple, dict], name: str,
              training: bool) -> nn.Module:
    """`module` once an assignment of `candidates` passes `check`, with its config updated where one states it."""
    problem = _resolve(module, candidates, lambda: check(module))
    if problem is not None:
        raise EagerRebuildError(
            f"cannot rebuild {name} pruned: on the example inputs, {problem}. Its code probably bakes a size that "
            "no attribute holds; use result.model (GraphModule) or result.exported (.pt2, ONNX) instead")
    config_problem = update_config(module, changed, check, inputs)
    if config_problem is not None:
        _refuse_save(module, config_problem)
    module.train(training)
    return module
