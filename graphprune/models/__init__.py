"""Built-in reference architectures: the CLI's default model and the test zoo.

`ZOO` maps a name to a `ModelSpec(name, factory, input_shape)`; it is read-only.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

import torch

from ..errors import InputError
from . import convnext, densenet, efficientnet, googlenet, mobilenet, regnet, resnet, shufflenet, squeezenet, unet, vgg, vit, yolo


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[[], torch.nn.Module]
    input_shape: tuple[int, ...]

    def build(self) -> torch.nn.Module:
        """A fresh model in eval mode, with deterministic weights."""
        torch.manual_seed(0)
        return self.factory().eval()

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(1)
        return (torch.randn(self.input_shape, generator=g),)


_FAMILIES = (resnet, vgg, mobilenet, efficientnet, densenet, googlenet, shufflenet, squeezenet, regnet, convnext, vit, unet, yolo)
ZOO = MappingProxyType({name: ModelSpec(name, f, tuple(shape)) for fam in _FAMILIES for name, f, shape in fam.MODELS})
DEFAULT_MODEL = "resnet50"


def get_model(name: str) -> ModelSpec:
    """The spec of a built-in model, or an InputError listing close names."""
    if name not in ZOO:
        close = difflib.get_close_matches(name, ZOO, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(f"no built-in model named {name!r}; {hint}built-in models: {', '.join(sorted(ZOO))}")
    return ZOO[name]
