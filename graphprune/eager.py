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
                   module, its children and grandchildren own: if every dim of size v changed to n, a := n (certain
                   when the module or a child owns such a dim, else a candidate); if only some did (hidden ==
                   heads x head_dim before pruning), or `v * d` is the size of a changed dim for another int
                   attribute d (a head count, d its head size), a has a candidate. Candidates are decided per
                   (class, attribute) by verification, fewest changes first: attributes the forward never reads
                   keep their old value.
    5. config      a Hugging Face config gets the field values for which the model class built from it (on
                   the meta device) has exactly the pruned shapes, so save_pretrained/from_pretrained round-trip;
                   when no uniform config can express them, save_pretrained is disabled with the reason. Where
                   no attribute makes the copy verify (its code reads the config at run time: Phi-3's fused
                   qkv_proj split), the class built from the solved config is the module (graphprune.hfconfig)
    6. verify      the copy and the pruned GraphModule give the same outputs on the example inputs
                   (agreement.mismatch: torch.allclose, rtol = atol = 1e-5); otherwise EagerRebuildError names why and where.
"""
from __future__ import annotations

import copy
import enum
import itertools
import sys
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping

import torch.fx as fx
import torch.nn as nn
from .agreement import call_inputs, graph_outputs, mismatch
from .codesizes import SplitSizes, split_sizes, uncomputable_splits
from .errors import GraphPruneError
from .hfconfig import rebuild_from_config, update_config
from .kvcache import cache_off
from .rules import RuleTable, default_rules

MAX_TRIALS = 64  # verifications of attribute candidates tried before giving up

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



def _dims(module: nn.Module, name: str, changed: dict) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(old, new) size of every dim of the tensors that `module` and its children own, and of those its
    grandchildren own (a layer wrapped with its norm is a child whose tensors lie one level down: ultralytics' Conv
    holds conv and bn)."""
    near, below = [], []
    for prefix, owner, level in _near(module, name, depth=2):
        for tname, t in itertools.chain(owner.named_parameters(recurse=False), owner.named_buffers(recurse=False)):
            old, new = changed.get(f"{prefix}.{tname}" if prefix else tname, (tuple(t.shape), tuple(t.shape)))
            (near if level < 2 else below).extend(zip(old, new))
    return near, below


def _near(module: nn.Module, name: str, depth: int, level: int = 0) -> Iterable[tuple[str, nn.Module, int]]:
    """(qualified name, module, level below `module`) of `module` and its descendants down to `depth` levels."""
    yield name, module, level
    if depth:
        for child_name, child in module.named_children():
            yield from _near(child, f"{name}.{child_name}" if name else child_name, depth - 1, level + 1)


def match_attributes(module: nn.Module, changed: dict, skip: set[str],
                     splits: Mapping[str, list[SplitSizes]] = MappingProxyType({})) -> tuple[dict, list[Candidate]]:
    """Size matching (module docstring, step 4): ({(module, attr): new value} certain, [Candidate] to verify).
    The parts of the splits a module's forward makes (`splits`, by module name) count as its dims: `self.c` in
    `x.split(self.c, 1)` follows the kept count of each part."""
    certain, candidates = {}, []
    for name, m in module.named_modules():
        if name in skip:
            continue
        near, below = _dims(m, name, changed)
        near += [pair for s in splits.get(name, ()) for pair in zip(s.old, s.new)]
        dims = near + below
        if all(o == n for o, n in dims):
            continue
        own = {o for o, _ in near}
        ints = {k: v for k, v in vars(m).items() if type(v) is int and v > 1}
        for attr, v in ints.items():
            news = {n for o, n in dims if o == v}
            # certain only when the module or a child owns a dim of size v: two levels down, a coincidence
            # (a Swin block's window of 4 and its attention's 4 heads) is a candidate, verified
            if news and v not in news and len(news) == 1 and v in own:
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


# -- 5: Hugging Face config (graphprune.hfconfig) ------------------------------------------------------
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
    certain, candidates = match_attributes(module, changed, handled, split_sizes(gm))
    _set_attrs(module, certain)
    expected = graph_outputs(gm, inputs)

    def check(candidate: nn.Module) -> str | None:
        return mismatch(candidate, gm, inputs, expected)

    with cache_off(module):  # the graph was analysed without the cache; its config keeps use_cache as it was
        verified = _verified(module, candidates, changed, check, call_inputs(gm, inputs, source), name,
                             source.training, uncomputable_splits(gm))
    if verified is not module and hasattr(getattr(module, "config", None), "use_cache"):  # built from a config copy
        verified.config.use_cache = module.config.use_cache
    return verified


def _verified(module: nn.Module, candidates, changed: dict, check, inputs: tuple[tuple, dict], name: str,
              training: bool, splits: list[str]) -> nn.Module:
    """`module` once an assignment of `candidates` passes `check`, with its config updated where one states it;
    else the class built from a solved config, where that passes `check` (hfconfig.rebuild_from_config).
    `splits`: the splits whose new sizes the code cannot compute (codesizes.uncomputable_splits), named first."""
    problem = _resolve(module, candidates, lambda: check(module))
    if problem is not None:  # the code may read its config at run time: the class built from a solved config
        module = rebuild_from_config(module, changed, check)
        if module is None:
            cause = "; ".join(splits) + ". So, " if splits else ""
            hint = "Use" if splits else "Its code probably bakes a size that no attribute holds; use"
            raise EagerRebuildError(
                f"cannot rebuild {name} pruned: {cause}on the example inputs, {problem}. {hint} result.model "
                "(GraphModule) or result.exported (.pt2, ONNX) instead")
        module.train(training)  # a new model built from its config: the caller's root mode for the whole tree
    else:  # the caller's model copied: every module is in the mode it has there
        config_problem = update_config(module, changed, check, inputs)
        if config_problem is not None:
            _refuse_save(module, config_problem)
    return module
