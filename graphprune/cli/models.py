"""MODEL on the command line -> an nn.Module and example inputs, checked (graphprune.inputs).

MODEL is a built-in model name (`graphprune explain --list` shows them) or `package.module:factory`, a
function returning an nn.Module; --input-shape gives the shape of the random example input (required for
a factory, optional for a built-in model, which has its own). --vocab-size N says a factory's model takes token
ids: its example input is then random integers in [0, N) of that shape, not random floats.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from ..inputs import check_model, check_model_and_inputs
from ..models import get_model
from .messages import CLIError, one_line


@dataclass(frozen=True)
class LoadedModel:
    name: str
    model: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    vocab_size: int | None = None  # the model takes token ids below this (--vocab-size); None: float inputs


def parse_shape(text: str, flag: str = "--input-shape") -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 0 for d in shape):
        raise CLIError(f"{flag} {text!r} is not a comma-separated list of positive ints; e.g. 1,3,224,224")
    if 0 in shape:
        raise CLIError(f"{flag} {text!r} has an empty dim {shape.index(0)} (size 0); every dim needs at least 1 "
                       "(a batch of one sample is enough), e.g. 1,3,224,224")
    return shape


def random_inputs(shapes: list[tuple[int, ...]], seed: int, vocab_size: int | None = None) -> tuple[torch.Tensor, ...]:
    """Standard-normal floats, or token ids uniform in [0, vocab_size) when it is given."""
    g = torch.Generator().manual_seed(seed)
    if vocab_size is not None:
        return tuple(torch.randint(0, vocab_size, s, generator=g) for s in shapes)
    return tuple(torch.randn(s, generator=g) for s in shapes)


def load_model(spec: str, input_shape: str | None, vocab_size: int | None = None) -> LoadedModel:
    """A built-in model by name, or `package.module:factory`; model and inputs checked (inputs.py)."""
    shape = parse_shape(input_shape) if input_shape else None
    if vocab_size is not None and (vocab_size < 1 or ":" not in spec):
        raise CLIError(f"--vocab-size {vocab_size}: " + ("give the number of token ids, >= 1" if vocab_size < 1 else
                       "it is for a package.module:factory model that takes token ids; built-in models take images"))
    if ":" not in spec:
        zoo = get_model(spec)
        model = zoo.build()
        inputs = random_inputs([shape], 1) if shape else zoo.example_inputs()
        return LoadedModel(spec, model, check_model_and_inputs(model, inputs))
    module_name, _, factory_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise CLIError(f"cannot import module {module_name!r} for MODEL {spec!r}: {type(exc).__name__}: "
                       f"{one_line(exc)}; check the module is on PYTHONPATH") from exc
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise CLIError(f"module {module_name!r} has no callable {factory_name!r}; MODEL must be package.module:factory")
    try:
        torch.manual_seed(0)
        model = factory()
    except Exception as exc:
        raise CLIError(f"factory {spec} raised {type(exc).__name__}: {one_line(exc)}") from exc
    if not isinstance(model, torch.nn.Module):
        raise CLIError(f"factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    check_model(model)
    if shape is None:
        raise CLIError(f"MODEL {spec!r} is not built in, so its input shape is unknown; pass --input-shape e.g. 1,3,224,224")
    inputs = check_model_and_inputs(model, random_inputs([shape], 1, vocab_size))
    return LoadedModel(spec, model.eval(), inputs, vocab_size)
