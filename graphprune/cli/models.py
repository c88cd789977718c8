"""MODEL on the command line -> a model and example inputs, checked (graphprune.inputs).

MODEL is recognised from what it is (sources.py): a built-in model name (`graphprune explain --list` shows
them), `package.module:factory` (a function returning an nn.Module), a .pt2 ExportedProgram, a Hugging Face
model directory, `timm:NAME` or an ultralytics .pt/.yaml. --input-shape gives the shape of the random example
input (required for a factory, optional for the others, which know their own). --vocab-size N says the model
takes token ids: its example input is then random integers in [0, N) of that shape, not random floats.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InputError
from ..inputs import check_model, check_model_and_inputs
from ..models import get_model
from . import hf, yolo
from .loaders import load_exported, load_timm
from .messages import CLIError, one_line
from .sources import ACCEPTED, Kind, detect


@dataclass(frozen=True)
class LoadedModel:
    name: str  # MODEL as report.json names it (a path made absolute), so graphprune recover finds it again
    model: object  # what prune_graph takes: an nn.Module, or an ExportedProgram
    inputs: tuple[torch.Tensor, ...]
    vocab_size: int | None = None  # the model takes token ids below this (--vocab-size); None: float inputs
    kind: Kind = Kind.BUILTIN
    runnable: torch.nn.Module | None = None  # `model` as an nn.Module in eval mode (ONNX, bench); None: `model`
    static_batch: int | None = None  # the batch size the model's graph is fixed to (an ExportedProgram's)
    mean: tuple[float, ...] | None = None  # --images normalisation the model family states (None: images.py's)
    std: tuple[float, ...] | None = None
    tokenizer: str | None = None  # the directory of the model's own tokenizer (--text)
    save_native: Callable | None = None  # (result, StagedDirectory) -> {"format", "line", ...}: in its own format

    @property
    def module(self) -> torch.nn.Module:
        return self.runnable if self.runnable is not None else self.model


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


def _builtin(spec: str, shape) -> LoadedModel:
    try:
        zoo = get_model(spec)
    except InputError as exc:
        raise CLIError(f"MODEL {spec!r} is not a file, a directory or a built-in model ({one_line(exc)}); MODEL is "
                       + ACCEPTED) from None
    model = zoo.build()
    inputs = random_inputs([shape], 1) if shape else zoo.example_inputs()
    return LoadedModel(spec, model, check_model_and_inputs(model, inputs))


def _factory(spec: str, shape, vocab_size: int | None) -> LoadedModel:
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
    return LoadedModel(spec, model.eval(), inputs, vocab_size, Kind.FACTORY)


def _hf_dir(path: str, shape, text: str | None, max_length: int | None) -> LoadedModel:
    loaded = hf.load_hf(path, shape, text, max_length)
    inputs = check_model_and_inputs(loaded.model, loaded.inputs)
    tokenizer = loaded.tokenizer
    return LoadedModel(path, loaded.model, inputs, loaded.vocab_size, Kind.HF_DIR, mean=loaded.mean, std=loaded.std,
                       tokenizer=tokenizer,
                       save_native=lambda result, out: hf.save_pruned(result, out.file(hf.SAVED_DIR), tokenizer))


def _ultralytics(path: str, shape) -> LoadedModel:
    model, x, ckpt = yolo.load(path, shape)
    return LoadedModel(path, model, check_model_and_inputs(model, (x,)), kind=Kind.ULTRALYTICS,
                       mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),  # ultralytics reads pixels / 255
                       save_native=lambda result, out: yolo.save(result, out, ckpt))


def _other(kind: Kind, spec: str, shape, vocab_size: int | None) -> LoadedModel:
    """An ExportedProgram or a timm model."""
    if kind is Kind.EXPORTED:
        loaded = load_exported(spec, shape, vocab_size)
    else:
        loaded = load_timm(spec, shape)
    return LoadedModel(spec, loaded.model, loaded.inputs, loaded.vocab_size, kind, loaded.runnable,
                       loaded.static_batch, loaded.mean, loaded.std)


def load_model(spec: str, input_shape: str | None, vocab_size: int | None = None, text: str | None = None,
               max_length: int | None = None) -> LoadedModel:
    """MODEL, recognised from what it is (sources.detect), with its example inputs, checked (inputs.py).

    `text` and `max_length` (--text, --max-length) give a Hugging Face text model its example input."""
    shape = parse_shape(input_shape) if input_shape else None
    kind = detect(spec)
    spec = os.path.abspath(spec) if kind in (Kind.EXPORTED, Kind.HF_DIR, Kind.ULTRALYTICS, Kind.ONNX) \
        and os.path.exists(spec) else spec  # an ultralytics config name stays a name
    if vocab_size is not None and (vocab_size < 1 or kind not in (Kind.FACTORY, Kind.EXPORTED)):
        raise CLIError(f"--vocab-size {vocab_size}: " + ("give the number of token ids, >= 1" if vocab_size < 1 else
                       "it is for a package.module:factory or .pt2 model that takes token ids; " + (
                           "built-in models take images" if kind is Kind.BUILTIN else f"this MODEL is a {kind.value}"
                           + (" (its config states the vocabulary)" if kind is Kind.HF_DIR else ""))))
    if kind is Kind.ONNX:
        raise CLIError(f"MODEL {spec!r} is an ONNX file; pruning needs the PyTorch model: " + ACCEPTED
                       + " (graphprune bench times ONNX files)")
    if kind is Kind.BUILTIN:
        return _builtin(spec, shape)
    if kind is Kind.FACTORY:
        return _factory(spec, shape, vocab_size)
    if kind is Kind.HF_DIR:
        return _hf_dir(spec, shape, text, max_length)
    if kind is Kind.ULTRALYTICS:
        return _ultralytics(spec, shape)
    return _other(kind, spec, shape, vocab_size)
