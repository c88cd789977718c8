"""graphprune bench: time ONNX files or models in ONNX Runtime, OpenVINO and ExecuTorch, fp32 and int8.

Sources are ONNX files or models (MODEL as for prune, e.g. the model.pt2 prune wrote), each recognised from
what it is (sources.detect); int8 is calibrated on --images or --text when given, else on random batches
(timing only). The timing itself is graphprune.timing's.
"""
from __future__ import annotations

import os
import re

import torch

import graphprune
from .. import timing
from ..atomic import write_json
from ..errors import GraphPruneError
from ..runtimes.kinds import Precision, Runtime, parse_precisions, parse_runtimes
from .distil import Family, check_data_flags, recovery_data
from .hf import own_tokenizer
from .messages import CLIError, Progress, one_line
from .models import load_model
from .onnx_inputs import check_input_shapes, parse_named_shapes
from .parsing import PROFILES
from .sources import ACCEPTED, Kind, detect

#: int8 vs fp32 cosine floor when int8 is calibrated on random inputs for timing (demo, bench)
TIMING_MIN_COSINE = 0.9


def _cli_wording(exc: GraphPruneError) -> str:
    """bench speaks to API callers (input_shapes={...}); on the command line that is --input-shape."""
    return re.sub(r"input_shapes=\{[^}]*\}", "--input-shape NAME=d0,d1,...", one_line(exc))


def _is_file_source(item: str) -> bool:
    """An ONNX file (by its bytes), not a model: sources.detect says which, or why neither."""
    return detect(item) is Kind.ONNX


def _model_name(item: str) -> str:
    """A model's row name: a path's base name (model.pt2), a factory's function, a built-in or timm name."""
    return os.path.basename(os.path.normpath(item)) if os.path.exists(item) else item.rpartition(":")[2] or item


def _bench_sources(args) -> tuple[dict[str, object], dict[str, int], dict[str, tuple[int, ...]]]:
    """{variant name: ONNX path or (model, inputs)}, the models' MACs and the ONNX inputs' --input-shape."""
    named = [e for e in args.input_shape or [] if "=" in e]
    model_shapes = [e for e in args.input_shape or [] if "=" not in e]
    if len(model_shapes) > 1:
        raise CLIError(f"--input-shape without NAME= gives the model input shape once; got {model_shapes}")
    sources, macs, files, families = {}, {}, {}, {}
    for item in args.sources:
        is_file = _is_file_source(item)
        name = os.path.splitext(os.path.basename(item))[0] if is_file else _model_name(item)
        while name in sources:
            name += "'"
        if is_file:
            sources[name] = files[name] = item
        else:
            loaded = load_model(item, model_shapes[0] if model_shapes else None, text=args.text,
                                max_length=args.max_length)
            sources[name] = (loaded.module, loaded.inputs)
            families[name] = loaded
            macs[name] = graphprune.analyse(loaded.model, loaded.inputs).cost.macs
    shapes = parse_named_shapes(named)
    check_input_shapes(files, shapes)
    return sources, macs, shapes, families


def _example(source) -> tuple[torch.Tensor, ...]:
    """A model's example inputs, or zeros of an ONNX file's static input shapes (batch 1 where dynamic)."""
    if isinstance(source, tuple):
        return source[1]
    import onnx
    from ..quantize import onnx_inputs

    _, specs = onnx_inputs(onnx.load(source, load_external_data=False))
    if any(d is None for spec in specs for d in spec.shape[1:]):
        raise CLIError(f"{source}: int8 calibration needs static input shapes beyond the batch dim")
    return tuple(torch.zeros(tuple(1 if d is None else d for d in spec.shape), dtype=spec.dtype) for spec in specs)


def _calibration_batches(args, source, loaded, progress: Progress) -> list:
    """int8 calibration: batches of --images/--text shaped like the source's one input (at its batch size), else
    random batches shaped like its inputs (TIMING only)."""
    from ..latency import random_calibration

    example = _example(source)
    if not (args.images or args.text):
        return random_calibration(example, args.calibration_batches)
    if len(example) != 1:
        raise CLIError(f"--images/--text calibrate a model with one input; {len(example)} inputs here")
    vocab = loaded.vocab_size if loaded is not None else None
    if args.text and vocab is None:
        raise CLIError(f"--text calibrates a model that takes token ids and states its vocabulary (a Hugging Face "
                       f"model directory); {source if loaded is None else loaded.name} does not")
    batch = example[0].shape[0]
    family = Family(loaded.tokenizer, loaded.mean, loaded.std, batch) if loaded is not None else Family(batch=batch)
    data = recovery_data(progress, args, tuple(example[0].shape), vocab, family)
    return [(b,) for b in data.batches[:args.calibration_batches]]


def cmd_bench(args) -> int:
    progress = Progress(args.quiet)
    runtimes, precisions = parse_runtimes(args.runtime), parse_precisions(args.precision)
    if args.calibration_batches < 1:
        raise CLIError(f"--calibration-batches must be >= 1, got {args.calibration_batches}")
    for runtime in runtimes:
        runtime.version()  # a missing runtime is one line before any work
    check_data_flags(args, next((own_tokenizer(s) for s in args.sources if own_tokenizer(s)), None))
    if (args.images or args.text) and Precision.INT8 not in precisions:
        raise CLIError(f"{'--images' if args.images else '--text'} calibrates int8; add --precision int8 (fp32 "
                       "timing reads no data)")
    onnx_files = [s for s in args.sources if _is_file_source(s)]
    if onnx_files and Runtime.EXECUTORCH in runtimes:
        raise CLIError(f"{onnx_files[0]} is an ONNX file; ExecuTorch needs the PyTorch model: {ACCEPTED} (e.g. the "
                       "model.pt2 graphprune prune wrote), or leave executorch out of --runtime")
    sources, macs, shapes, families = _bench_sources(args)
    if shapes and (Precision.INT8 in precisions or set(runtimes) != {Runtime.ORT}):
        raise CLIError("--input-shape NAME=... (dynamic ONNX dims) works with --runtime ort --precision fp32 only; "
                       "export the ONNX file with static shapes for int8 or other runtimes")
    calibration = None
    if Precision.INT8 in precisions:
        if not (args.images or args.text):
            progress.note(f"int8 is calibrated on {args.calibration_batches} RANDOM batches: fine for timing, "
                          "not for accuracy (pass --images DIR or --text FILE for real data)")
        calibration = {name: _calibration_batches(args, src, families.get(name), progress)
                       for name, src in sources.items()}
    profiles = [PROFILES[p] for p in args.profile] if args.profile else [timing.EDGE]
    reports = []
    for profile in profiles:
        try:
            with progress.step(f"benchmarking {len(sources)} model(s) on {', '.join(r.value for r in runtimes)} "
                               f"({', '.join(p.value for p in precisions)}), profile {profile.name}"):
                reports += timing.benchmark_models(sources, runtimes, precisions, profile, calibration=calibration,
                                                      macs=macs, warmup=args.warmup, repeats=args.repeats,
                                                      rounds=args.rounds, input_shapes=shapes,
                                                      min_cosine=TIMING_MIN_COSINE)
        except GraphPruneError as exc:
            raise CLIError(_cli_wording(exc)) from exc
    for report in reports:
        print(report.format_table())
    if args.json:
        write_json(args.json, [r.to_json() for r in reports])
        print(f"wrote {args.json}")
    if args.plot:
        timing.plot_latency_vs_macs(reports, args.plot)
        print(f"wrote {args.plot}")
    return 0
