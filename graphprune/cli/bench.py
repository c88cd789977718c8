"""graphprune bench: time ONNX files or models in ONNX Runtime, OpenVINO and ExecuTorch, fp32 and int8.

Sources are ONNX files (by suffix or a path separator) or models (MODEL as for prune); int8 is
calibrated on random batches, for timing only. The timing itself is graphprune.timing's.
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
from .messages import CLIError, Progress, one_line
from .models import load_model
from .onnx_inputs import check_input_shapes, parse_named_shapes
from .parsing import PROFILES

#: int8 vs fp32 cosine floor when int8 is calibrated on random inputs for timing (demo, bench)
TIMING_MIN_COSINE = 0.9


def _cli_wording(exc: GraphPruneError) -> str:
    """bench speaks to API callers (input_shapes={...}); on the command line that is --input-shape."""
    return re.sub(r"input_shapes=\{[^}]*\}", "--input-shape NAME=d0,d1,...", one_line(exc))


def _is_file_source(item: str) -> bool:
    """An ONNX file (by suffix or a path separator), not a model name or package.module:factory."""
    return item.endswith(".onnx") or os.path.sep in item


def _bench_sources(args) -> tuple[dict[str, object], dict[str, int], dict[str, tuple[int, ...]]]:
    """{variant name: ONNX path or (model, inputs)}, the models' MACs and the ONNX inputs' --input-shape."""
    named = [e for e in args.input_shape or [] if "=" in e]
    model_shapes = [e for e in args.input_shape or [] if "=" not in e]
    if len(model_shapes) > 1:
        raise CLIError(f"--input-shape without NAME= gives the model input shape once; got {model_shapes}")
    sources, macs, files = {}, {}, {}
    for item in args.sources:
        is_file = _is_file_source(item)
        name = os.path.splitext(os.path.basename(item))[0] if is_file else item.rpartition(":")[2] or item
        while name in sources:
            name += "'"
        if is_file:
            sources[name] = files[name] = item
        else:
            loaded = load_model(item, model_shapes[0] if model_shapes else None)
            sources[name] = (loaded.model, loaded.inputs)
            macs[name] = graphprune.analyse(loaded.model, loaded.inputs).cost.macs
    shapes = parse_named_shapes(named)
    check_input_shapes(files, shapes)
    return sources, macs, shapes


def _calibration_batches(source, n: int) -> list:
    """Random batches shaped like a model's inputs (an ONNX file's static input shapes): int8 for TIMING only."""
    from ..latency import random_calibration
    from ..quantize import onnx_inputs

    if isinstance(source, tuple):
        return random_calibration(source[1], n)
    import onnx

    _, specs = onnx_inputs(onnx.load(source, load_external_data=False))
    if any(d is None for spec in specs for d in spec.shape[1:]):
        raise CLIError(f"{source}: int8 calibration needs static input shapes beyond the batch dim")
    shapes = [tuple(1 if d is None else d for d in spec.shape) for spec in specs]
    return random_calibration(tuple(torch.zeros(s) for s in shapes), n)


def cmd_bench(args) -> int:
    progress = Progress(args.quiet)
    runtimes, precisions = parse_runtimes(args.runtime), parse_precisions(args.precision)
    if args.calibration_batches < 1:
        raise CLIError(f"--calibration-batches must be >= 1, got {args.calibration_batches}")
    for runtime in runtimes:
        runtime.version()  # a missing runtime is one line before any work
    onnx_files = [s for s in args.sources if _is_file_source(s)]
    if onnx_files and Runtime.EXECUTORCH in runtimes:
        raise CLIError(f"{onnx_files[0]} is an ONNX file; ExecuTorch needs the PyTorch model (a built-in model name "
                       "or package.module:factory), or leave executorch out of --runtime")
    sources, macs, shapes = _bench_sources(args)
    if shapes and (Precision.INT8 in precisions or set(runtimes) != {Runtime.ORT}):
        raise CLIError("--input-shape NAME=... (dynamic ONNX dims) works with --runtime ort --precision fp32 only; "
                       "export the ONNX file with static shapes for int8 or other runtimes")
    calibration = None
    if Precision.INT8 in precisions:
        progress.note(f"int8 is calibrated on {args.calibration_batches} RANDOM batches: fine for timing, "
                      "not for accuracy (use graphprune.quantize with real data for that)")
        calibration = {name: _calibration_batches(src, args.calibration_batches) for name, src in sources.items()}
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
