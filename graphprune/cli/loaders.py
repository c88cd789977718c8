"""MODEL kinds that are files or other libraries' names: a .pt2 ExportedProgram, timm:NAME (an ultralytics .pt/.yaml:
yolo.py; sources.py tells which it is). timm is optional: without it, one line names the extra to install.

An ExportedProgram's example input is the one torch.export.save stored (ExportedProgram.example_inputs),
else --input-shape (random floats, or random ids below --vocab-size for an integer input); it is pruned as the
graph it is, and run (ONNX export, bench) as a plain GraphModule of its unlifted module.
"""
from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass

import torch

from ..errors import first_line
from .archive_types import REGISTERING_LIBRARIES, import_registering_modules, unbuilt_types
from .messages import CLIError


@dataclass(frozen=True)
class Loaded:
    model: object  # what prune_graph takes: an nn.Module or an ExportedProgram
    inputs: tuple[torch.Tensor, ...]
    runnable: torch.nn.Module  # the same network as an nn.Module that runs in eval mode
    vocab_size: int | None = None
    static_batch: int | None = None  # the batch size the graph is fixed to, if it is
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def _user_inputs(ep) -> list:
    """The example values (fake tensors) of the program's user inputs, in order."""
    from torch.export.graph_signature import InputKind

    names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    values = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
    return [values.get(name) for name in names]


def _random_like(path: str, value, shape: tuple[int, ...], vocab_size: int | None) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if value is not None and not value.dtype.is_floating_point:
        if vocab_size is None:
            raise CLIError(f"MODEL {path!r} takes {value.dtype} input (token ids?); give --vocab-size N so the "
                           "random example input is ids below N")
        return torch.randint(0, vocab_size, shape, generator=g, dtype=value.dtype)
    return torch.randn(shape, generator=g, dtype=value.dtype if value is not None else torch.float32)


def _exported_inputs(path: str, ep, shape, vocab_size) -> tuple[torch.Tensor, ...]:
    values = _user_inputs(ep)
    if shape is not None:
        if len(values) != 1:
            raise CLIError(f"--input-shape gives one input, but the program in {path!r} takes {len(values)}")
        return (_random_like(path, values[0], shape, vocab_size),)
    stored = getattr(ep, "example_inputs", None)
    if stored is not None:
        args, kwargs = stored
        if kwargs:
            raise CLIError(f"the program in {path!r} takes keyword inputs ({', '.join(kwargs)}); the command line "
                           "feeds positional inputs only: export it with positional args")
        return tuple(args)
    if all(v is not None and all(isinstance(d, int) for d in v.shape) for v in values):
        return tuple(_random_like(path, v, tuple(v.shape), vocab_size) for v in values)
    raise CLIError(f"the program in {path!r} stores no example inputs and has dynamic shapes; pass --input-shape")


def _read_program(path: str) -> torch.export.ExportedProgram:
    """torch.export.load, after importing the modules that register the archive's transformers output types
    (archive_types); its failure is one CLIError, naming the types no process rebuilds without other code."""
    import_registering_modules(path)
    torch_log = logging.getLogger("torch.export")
    level = torch_log.level
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's own deprecation notes while unpickling its tree specs
            torch_log.setLevel(logging.ERROR)  # a failed load logs its traceback as a warning: the error below says it
            return torch.export.load(path)
    except Exception as exc:
        unbuilt = [t for t in unbuilt_types(path) if t.rpartition(".")[0] not in sys.modules]
        if unbuilt:
            raise CLIError(f"MODEL {path!r} takes or returns {', '.join(unbuilt)}, which torch.export.load rebuilds "
                           "only once the code registering it with torch's pytree has run (graphprune imports "
                           f"{' and '.join(sorted(REGISTERING_LIBRARIES))} output classes itself, where installed): "
                           "load it in Python after that code, or export the model returning tensors") from None
        raise CLIError(f"MODEL {path!r} is a PT2 archive, but torch.export.load cannot read an ExportedProgram from "
                       f"it ({type(exc).__name__}: {first_line(exc)}); pass a file torch.export.save wrote") from None
    finally:
        torch_log.setLevel(level)


def load_exported(path: str, shape, vocab_size: int | None) -> Loaded:
    ep = _read_program(path)
    inputs = _exported_inputs(path, ep, shape, vocab_size)
    unlifted = ep.module()
    runnable = torch.fx.GraphModule(unlifted, unlifted.graph)  # a plain GraphModule: eval() and export work
    first = next(iter(_user_inputs(ep)), None)
    batch = first.shape[0] if first is not None and first.dim() and isinstance(first.shape[0], int) else None
    return Loaded(ep, inputs, runnable.eval(), vocab_size, batch)


def load_timm(spec: str, shape) -> Loaded:
    name = spec[len("timm:"):]
    try:
        import timm
    except ImportError:
        raise CLIError(f"MODEL {spec!r} needs timm, which is not installed; pip install 'graphprune[timm]'") from None
    try:
        model = timm.create_model(name, pretrained=True).eval()
    except Exception as exc:
        raise CLIError(f"timm cannot create MODEL {spec!r} with its pretrained weights ({type(exc).__name__}: "
                       f"{first_line(exc)}); timm.list_models(pretrained=True) names the models it has") from None
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    shape = shape or (1, *cfg.get("input_size", (3, 224, 224)))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    mean, std = cfg.get("mean"), cfg.get("std")
    return Loaded(model, (x,), model, mean=tuple(mean) if mean else None, std=tuple(std) if std else None)
