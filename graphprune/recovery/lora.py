"""Low-rank adapters for recovery (trainable="lora"): peft's LoRA on the student's nn.Linear layers, merged back.

Invariants:
  * While attached, only the adapters train: peft freezes every other parameter of the student. `merge`
    folds each adapter into its layer's weight, W += (alpha / rank) B A (peft's merge_and_unload), removes
    every peft module and restores each parameter's requires_grad, so the student ends with exactly its
    pruned shapes, module classes and parameter names, and only the adapted weights changed.
  * Adapted by default: every nn.Linear the student calls itself. In a GraphModule (the fx frontend) that is
    each call_module node of an nn.Linear (a Linear inside a rule's leaf module, e.g. attention's out_proj,
    is not called by the graph); in an nn.Module, every nn.Linear outside nn.MultiheadAttention. A Linear
    whose weight is shared with another module (an LM head tied to the embedding) is skipped by default and
    refused when named: merging into it would change the other module too.
  * A torch.export graph has no Linear modules (aten.linear on weight tensors), so nothing can be adapted:
    an InputError says what to do instead.
  * peft is imported only when adapters are attached, never at `import graphprune`.
  * Adapters start from a seeded draw, the same in every run and on every rank.
"""
from __future__ import annotations

import collections
import difflib
import re

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import InputError, MissingRuntimeError, first_line
from .options import LoRA

LORA_EXTRA = "pip install 'graphprune[lora]'"
ADAPTER = "default"  # peft's adapter name


def _peft():
    """(LoraConfig, LoraModel); MissingRuntimeError naming the extra when peft is not installed."""
    try:
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel
    except ImportError as exc:
        raise MissingRuntimeError(f"trainable='lora' trains adapters with peft, which is not installed "
                                  f"({first_line(exc)}); install it with: {LORA_EXTRA}") from None
    return LoraConfig, LoraModel


def called_linears(student: nn.Module) -> list[str]:
    """Qualified names of the nn.Linear modules `student` calls itself (module docstring)."""
    if isinstance(student, fx.GraphModule):
        names = [n.target for n in student.graph.nodes if n.op == "call_module"]
        return list(dict.fromkeys(t for t in names if isinstance(student.get_submodule(t), nn.Linear)))
    inside_attention = {f"{name}.{child}" if name else child
                        for name, m in student.named_modules() if isinstance(m, nn.MultiheadAttention)
                        for child, _ in m.named_children()}
    return [name for name, m in student.named_modules() if isinstance(m, nn.Linear) and name not in inside_attention]


def _shared(student: nn.Module, names: list[str]) -> set[str]:
    """The modules of `names` whose weight another module holds too (tied)."""
    uses = collections.Counter(id(p) for _, p in student.named_parameters(remove_duplicate=False))
    return {name for name in names if uses[id(student.get_submodule(name).weight)] > 1}


def _no_linears(student: nn.Module) -> InputError:
    is_export = isinstance(student, fx.GraphModule) and any(
        n.op == "call_function" and n.target is torch.ops.aten.linear.default for n in student.graph.nodes)
    if is_export:
        return InputError(
            "trainable='lora' puts adapters on nn.Linear modules, but this pruned graph was made by the torch.export "
            "frontend, where a linear layer is an aten.linear op on a weight tensor, not a module. Recover the "
            "rebuilt model instead: recover(result.module, teacher=<the dense model>, trainable='lora', ...) "
            "(outputs distilled, not features), prune with frontend='fx' where torch.fx can trace the model, "
            "or use trainable='all'")
    return InputError(f"trainable='lora' puts adapters on nn.Linear modules, and the student "
                      f"({type(student).__name__}) calls none; use trainable='all'")


def targets(student: nn.Module, lora: LoRA) -> tuple[str, ...]:
    """The qualified names of the Linear modules to adapt: LoRA.targets resolved (a full name, or the last part
    of one: "q_proj" names every ...q_proj), else every called, unshared nn.Linear (module docstring)."""
    called = called_linears(student)
    if not called:
        raise _no_linears(student)
    tied = _shared(student, called)
    if lora.targets is None:
        chosen = [name for name in called if name not in tied]
        if not chosen:
            raise InputError(f"trainable='lora': every nn.Linear of the student shares its weight with another "
                             f"module ({', '.join(called)}); use trainable='all'")
        return tuple(chosen)
    chosen = []
    for target in lora.targets:
        found = [name for name in called if name == target or name.endswith("." + target)]
        if not found:
            close = difflib.get_close_matches(target, called, n=3)
            raise InputError(f"LoRA.targets names {target!r}, which is no nn.Linear the student calls"
                             + (f" (close: {', '.join(close)})" if close else "")
                             + f"; name some of: {', '.join(called[:8])}" + (" ..." if len(called) > 8 else ""))
        shared = [name for name in found if name in tied]
        if shared:
            raise InputError(f"LoRA.targets names {shared[0]!r}, whose weight is shared with another module (tied); "
                             "merging an adapter into it would change that module too: leave it out")
        chosen += [name for name in found if name not in chosen]
    return tuple(chosen)


class Adapters:
    """LoRA adapters attached to `student` in place (module docstring); `merge` folds them in and detaches them."""

    def __init__(self, student: nn.Module, lora: LoRA, seed: int):
        LoraConfig, LoraModel = _peft()
        self.student, self.names = student, targets(student, lora)
        self.requires_grad = {name: p.requires_grad for name, p in student.named_parameters()}
        pattern = "^(?:" + "|".join(re.escape(name) for name in self.names) + ")$"
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=pattern, bias="none")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.tuner = LoraModel(student, config, ADAPTER)

    def merge(self) -> nn.Module:
        """The student with W += (alpha / rank) B A in every adapted layer and no peft module left."""
        model = self.tuner.merge_and_unload()
        for name, p in model.named_parameters():
            p.requires_grad_(self.requires_grad.get(name, True))
        return model
