"""Checks of a model and its example inputs before any tracing: one clear InputError each.

Invariant: a model that passes is an eager `torch.nn.Module` (not TorchScript), and the
inputs are a non-empty tuple of tensors with no 0-sized dim and, for floating point
inputs, only finite values. Anything else would fail deep inside torch with a message
about torch internals instead of the user's mistake.
"""
from __future__ import annotations

import torch

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


def check_inputs(example_inputs) -> tuple[torch.Tensor, ...]:
    """The example inputs as a tuple of tensors; InputError on a non-tensor, an empty dim or a NaN/inf."""
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not inputs:
        raise InputError("no example inputs given; pass one tensor per forward() argument, "
                         "e.g. (torch.randn(1, 3, 224, 224),)")
    for k, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"example input {k} is a {type(t).__name__}: example_inputs must be a tensor or a tuple "
                             "of tensors; pass one tensor per forward() argument, e.g. (torch.randn(1, 3, 224, 224),)")
        if 0 in t.shape:
            dim = tuple(t.shape).index(0)
            raise InputError(f"example input {k} has shape {tuple(t.shape)}: dim {dim} is empty (size 0); "
                             "pruning needs a real run, so give every dim a size of at least 1 "
                             "(a batch of one sample is enough)")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(f"example input {k} holds NaN or infinite values; pass finite values "
                             "(e.g. torch.randn or real samples)")
    return tuple(inputs)


def check_model_and_inputs(model, example_inputs) -> tuple[torch.Tensor, ...]:
    """Both checks above; returns the inputs as a tuple of tensors."""
    check_model(model)
    return check_inputs(example_inputs)
