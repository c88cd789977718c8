"""Checks of a model and its example inputs before any tracing: one clear InputError each.

Invariant: a model that passes is an eager `torch.nn.Module` (not TorchScript), and the
inputs are a tuple of tensors and a dict of keyword inputs, not both empty, whose tensors have
no 0-sized dim and, for floating point inputs, only finite values. Anything else would fail deep inside torch with a message
about torch internals instead of the user's mistake.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch.utils._pytree import tree_leaves

from .errors import InputError


def check_model(model) -> None:
    """Raise InputError unless `model` is an eager (not scripted or traced) torch.nn.Module."""
    if isinstance(model, torch.jit.ScriptModule):
        how = "torch.jit.trace" if isinstance(model, torch.jit.TracedModule) else "torch.jit.script"
        raise InputError(
            f"the model is a TorchScript module ({type(model).__name__}, made by {how}); torch.fx cannot trace "
            "TorchScript. Pass the original nn.Module instead (call graphprune before torch.jit.script/trace, "
            "and script the pruned model afterwards if needed)")
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"the model must be a torch.nn.Module, got {type(model).__name__}; pass the network itself "
                         "(e.g. a Hugging Face AutoModel, not its tokenizer) and tensors it takes as example_inputs")


def _check_tensor(t: torch.Tensor, what: str) -> None:
    """InputError unless `t` has no empty dim and, if floating point, only finite values; `what` names it."""
    if 0 in t.shape:
        dim = tuple(t.shape).index(0)
        raise InputError(f"{what} has shape {tuple(t.shape)}: dim {dim} is empty (size 0); "
                         "pruning needs a real run, so give every dim a size of at least 1 "
                         "(a batch of one sample is enough)")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} holds NaN or infinite values; pass finite values "
                         "(e.g. torch.randn or real samples)")


def check_inputs(example_inputs, example_kwargs: Mapping | None = None) -> tuple[torch.Tensor, ...]:
    """The example inputs as a tuple of tensors (None or () when forward() takes keywords only); InputError on
    a non-tensor, an empty dim or a NaN/inf, in them or in the tensors of `example_kwargs`, and when both
    are empty."""
    if example_inputs is None:
        example_inputs = ()
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if example_kwargs is not None and not isinstance(example_kwargs, Mapping):
        raise InputError(f"example_kwargs must be a dict of forward() argument name -> value, got "
                         f"{type(example_kwargs).__name__}; e.g. example_kwargs={{'x': torch.randn(1, 8)}}")
    kwargs = dict(example_kwargs or {})
    if not inputs and not kwargs:
        raise InputError("no example inputs given; pass one tensor per forward() argument, "
                         "e.g. (torch.randn(1, 3, 224, 224),), or keyword inputs as example_kwargs={'x': ...}")
    for k, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"example input {k} is a {type(t).__name__}: example_inputs must be a tensor or a tuple "
                             "of tensors; pass one tensor per forward() argument, e.g. (torch.randn(1, 3, 224, 224),)")
        _check_tensor(t, f"example input {k}")
    for name, value in kwargs.items():
        for t in tree_leaves(value):
            if isinstance(t, torch.Tensor):
                _check_tensor(t, f"example_kwargs[{name!r}]")
    return tuple(inputs)


def check_model_and_inputs(model, example_inputs, example_kwargs: Mapping | None = None) -> tuple[torch.Tensor, ...]:
    """Both checks above; returns the positional inputs as a tuple of tensors."""
    check_model(model)
    return check_inputs(example_inputs, example_kwargs)
