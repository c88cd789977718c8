"""The `graphprune` command: prune, apply, explain, bench, demo.

MODEL is a built-in model name (`graphprune explain --list` shows them) or
`package.module:factory`, a function returning an nn.Module. Errors print one line on
stderr and exit non-zero (2 for a user error, 1 for a graphprune bug). An output
directory is written whole or not at all: it is staged in a hidden sibling directory
created before any work (so an unwritable --out fails first), then renamed into place.
Progress goes to stderr, only when stderr is a terminal and --quiet is not given.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.metadata
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

import torch

import graphprune
from . import timing
from .atomic import StagedDirectory, write_atomically, write_json
from .errors import ExportError, GraphPruneError, InputError
from .export import export_onnx, save_torch_artifact
from .importance import BUILTIN, Taylor
from .inputs import check_model, check_model_and_inputs
from .models import DEFAULT_MODEL, ZOO, get_model
from .report import PruneReport
from .runtimes.kinds import Precision, Runtime, parse_precisions, parse_runtimes

PROFILES = {"cpu": timing.CPU, "edge": timing.EDGE}
TARGETS = ["auto", "ort-x86", "xnnpack", "arm", "none"]
# packages whose exceptions are the toolchain rejecting the user's model or inputs, not graphprune bugs
TOOLCHAIN = ("torch", "onnx", "onnxscript", "onnx_ir", "onnxruntime")


class CLIError(GraphPruneError):
    """A command-line argument is invalid."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: "graphprune: error: ...; see graphprune prune --help"."""

    def error(self, message: str):
        print(f"graphprune: error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


@dataclass(frozen=True)
class LoadedModel:
    name: str
    model: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]


# ----------------------------------------------------------------------------- messages and progress


def one_line(exc: BaseException) -> str:
    """The error message on one line: torch's multi-line text cut to its first line.

    torch.fx appends "While executing ..." and a traceback after a blank line; a wrapped
    torch exception (`__cause__`) quoted in full is replaced by its first line.
    """
    text = str(exc)
    cause = exc.__cause__
    if cause is not None and "\n" in str(cause).strip() and str(cause) in text:
        text = text.replace(str(cause), str(cause).strip().splitlines()[0])
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).strip().split("\n\n")[0]
    return " ".join(text.split()) or type(exc).__name__


def toolchain_package(exc: BaseException) -> str | None:
    """"torch", "onnx", ... when the innermost Python frame of the traceback belongs to one of TOOLCHAIN."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    package = tb.tb_frame.f_globals.get("__name__", "").split(".")[0] if tb is not None else ""
    return package if package in TOOLCHAIN else None


@contextlib.contextmanager
def toolchain_errors(error: type[GraphPruneError], step: str, fix: str) -> Iterator[None]:
    """Turn an exception that torch/onnx/onnxruntime raised during `step` into a one-line `error`."""
    try:
        yield
    except GraphPruneError:
        raise
    except Exception as exc:
        package = toolchain_package(exc)
        if package is None:
            raise
        raise error(f"{step} failed inside {package}: {type(exc).__name__}: {one_line(exc)}; {fix}") from exc


class Progress:
    """Step lines on stderr ("[graphprune] exporting ... 2.1 s"), only on a terminal and without --quiet."""

    def __init__(self, quiet: bool = False):
        self.enabled = not quiet and sys.stderr.isatty()

    def note(self, text: str) -> None:
        if self.enabled:
            print(f"[graphprune] {text}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        print(f"[graphprune] {text} ...", end="", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            print(" failed", file=sys.stderr, flush=True)
            raise
        print(f" {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- models and shapes


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


def _random_inputs(shapes: list[tuple[int, ...]], seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=g) for s in shapes)


def load_model(spec: str, input_shape: str | None) -> LoadedModel:
    """A built-in model by name, or `package.module:factory`; model and inputs checked (inputs.py)."""
    shape = parse_shape(input_shape) if input_shape else None
    if ":" not in spec:
        zoo = get_model(spec)
        model = zoo.build()
        inputs = _random_inputs([shape], 1) if shape else zoo.example_inputs()
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
    inputs = check_model_and_inputs(model, _random_inputs([shape], 1))
    return LoadedModel(spec, model.eval(), inputs)


def _ignore_list(entries: list[str] | None) -> list[str]:
    """--ignore a --ignore b,c -> [a, b, c]."""
    return [name.strip() for entry in entries or [] for name in entry.split(",") if name.strip()]


def _check_importance(args) -> None:
    """Refuse a criterion the command line cannot feed (before any work)."""
    if isinstance(BUILTIN[args.importance], Taylor):
        raise CLIError(f"--importance {args.importance} needs labelled data and a loss, which the command line "
                       "cannot provide; use the Python API (prune_graph(..., importance='taylor', calibration=..., "
                       "loss_fn=...)) or pick --importance activation, apoz or l2")
    if args.calibration_batches < 1:
        raise CLIError(f"--calibration-batches must be >= 1, got {args.calibration_batches}")


def _calibration(args, loaded: LoadedModel) -> list[tuple[torch.Tensor, ...]]:
    """Random batches shaped like the example inputs, for the data-driven criteria (see --help)."""
    if not BUILTIN[args.importance].needs_data:
        return []
    shapes = [tuple(t.shape) for t in loaded.inputs]
    return [_random_inputs(shapes, 100 + k) for k in range(args.calibration_batches)]


# ----------------------------------------------------------------------------- prune / apply


def _bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def before_after_table(report: PruneReport, original_bytes: int, pruned_bytes: int, parity: float) -> str:
    rows = [
        ("params", f"{report.params_before:,}", f"{report.params_after:,}", report.params_after / report.params_before),
        ("MACs", f"{report.macs_before:,}", f"{report.macs_after:,}", report.macs_after / max(report.macs_before, 1)),
        ("ONNX file", _bytes(original_bytes), _bytes(pruned_bytes), pruned_bytes / original_bytes),
    ]
    lines = [f"{'':12s}{'original':>18s}{'pruned':>18s}{'ratio':>8s}"]
    lines += [f"{name:12s}{a:>18s}{b:>18s}{r:8.3f}" for name, a, b, r in rows]
    lines.append(f"ORT parity (pruned ONNX vs PyTorch): max abs diff {parity:.2e}")
    return "\n".join(lines)


def _staged_out(args) -> StagedDirectory:
    """Created first, before loading anything: an unwritable or occupied --out fails before any work."""
    return StagedDirectory(args.out, replace=args.force)


def run_step(progress: Progress, text: str, prune) -> "graphprune.PruneResult":
    fix = "check that the model runs on the example inputs (--input-shape) and that torch.fx can trace it"
    with progress.step(text), toolchain_errors(InputError, "tracing and pruning", fix):
        return prune()


def write_outputs(out: StagedDirectory, loaded: LoadedModel, result, settings: dict, progress: Progress) -> dict:
    """original.onnx, model.onnx (parity-checked in ONNX Runtime), model.pt2, plan.json, report.json."""
    fix = ("the pruned model could not be exported; keep the module named above with --ignore, "
           "or report it with the command line")
    with progress.step("exporting the original and pruned models to ONNX, checking parity in ONNX Runtime"), \
            toolchain_errors(ExportError, "ONNX export", fix):
        original = export_onnx(loaded.model, loaded.inputs, out.file("original.onnx"))
        pruned = export_onnx(result.model, loaded.inputs, out.file("model.onnx"))
    with progress.step("saving the reloadable PyTorch model (model.pt2)"), \
            toolchain_errors(ExportError, "saving model.pt2", fix):
        fmt = save_torch_artifact(result.model, loaded.inputs, out.file("model.pt2"))
    write_atomically(out.file("plan.json"), lambda f: f.write(result.plan.to_json().encode()))
    summary = {
        "model": loaded.name, **settings, "input_shape": list(loaded.inputs[0].shape),
        "report": result.report.to_json(),
        "onnx": {"original_bytes": original.file_bytes, "pruned_bytes": pruned.file_bytes,
                 "pruned_max_abs_diff": pruned.max_abs_diff, "opset": pruned.opset},
        "torch_artifact": {"file": "model.pt2", "format": fmt},
    }
    write_json(out.file("report.json"), summary)
    print(result.report.summary(full=settings.get("verbose", False)))
    print(before_after_table(result.report, original.file_bytes, pruned.file_bytes, pruned.max_abs_diff))
    return summary


def prune_into(args, out: StagedDirectory, progress: Progress) -> dict:
    """Load, prune and write every artifact into the staging directory; returns report.json's content."""
    return prune_loaded(args, out, progress)[0]


def prune_loaded(args, out: StagedDirectory, progress: Progress) -> tuple[dict, LoadedModel, "graphprune.PruneResult"]:
    """prune_into, also returning the loaded model and the prune result (the demo builds more files from them)."""
    _check_importance(args)
    with progress.step(f"loading {args.model}"):
        loaded = load_model(args.model, args.input_shape)
    calibration = _calibration(args, loaded)
    if calibration:
        progress.note(f"--importance {args.importance} scores channels on {len(calibration)} random batches")
    ignore = _ignore_list(args.ignore)
    result = run_step(progress, f"tracing and pruning {loaded.name} at ratio {args.ratio} ({args.importance}, "
                            f"{args.scope} scope)",
                  lambda: graphprune.prune_graph(loaded.model, loaded.inputs, ratio=args.ratio,
                                                 importance=args.importance, scope=args.scope, ignore=tuple(ignore),
                                                 round_to=args.round_to, target=args.target, calibration=calibration))
    settings = {"ratio": args.ratio, "importance": args.importance, "scope": args.scope, "round_to": args.round_to,
                "target": result.report.target, "target_requested": args.target, "ignore": ignore,
                "calibration_batches": len(calibration), "verbose": getattr(args, "verbose", False)}
    return write_outputs(out, loaded, result, settings, progress), loaded, result


def cmd_prune(args) -> int:
    progress = Progress(args.quiet)
    with _staged_out(args) as out:
        prune_into(args, out, progress)
        written = out.commit()
    print(f"wrote {', '.join(written)} to {args.out}")
    return 0


def read_plan(path: str) -> "graphprune.PrunePlan":
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read PLAN {path!r} ({getattr(exc, 'strerror', None) or exc}); pass the path of a "
                       "plan.json written by graphprune prune") from exc
    try:
        return graphprune.PrunePlan.from_json(text)
    except InputError as exc:
        raise CLIError(f"PLAN {path!r}: {one_line(exc)}") from exc


def cmd_apply(args) -> int:
    progress = Progress(args.quiet)
    plan = read_plan(args.plan)
    with _staged_out(args) as out:
        with progress.step(f"loading {args.model}"):
            loaded = load_model(args.model, args.input_shape)
        result = run_step(progress, f"tracing {loaded.name} and applying the plan",
                      lambda: graphprune.apply_plan(loaded.model, loaded.inputs, plan))
        write_outputs(out, loaded, result, {"plan": os.path.abspath(args.plan),
                                            "verbose": getattr(args, "verbose", False)}, progress)
        written = out.commit()
    print(f"wrote {', '.join(written)} to {args.out}")
    return 0


# ----------------------------------------------------------------------------- explain


def cmd_explain(args) -> int:
    if args.list:
        for name, spec in sorted(ZOO.items()):
            print(f"{name:22s} input {'x'.join(map(str, spec.input_shape))}")
        return 0
    if not args.model:
        raise CLIError("explain needs MODEL (or --list)")
    progress = Progress(args.quiet)
    with progress.step(f"loading {args.model}"):
        loaded = load_model(args.model, args.input_shape)
    analysis = run_step(progress, f"tracing and analysing {loaded.name}",
                        lambda: graphprune.analyse(loaded.model, loaded.inputs))
    print(analysis.explain())
    print("names are module names: `--ignore NAME` keeps the channels of every group that NAME "
          "(or a module inside it) writes")
    return 0


# ----------------------------------------------------------------------------- bench


def parse_named_shapes(entries: list[str] | None) -> dict[str, tuple[int, ...]]:
    """--input-shape NAME=1,3,224,224 (repeatable) -> {NAME: (1, 3, 224, 224)}."""
    shapes = {}
    for entry in entries or []:
        name, sep, dims = entry.partition("=")
        if not sep or not name:
            raise CLIError(f"--input-shape {entry!r} must be NAME=d0,d1,... (the ONNX input's name), "
                           "e.g. input_0=1,3,224,224")
        if name in shapes:
            raise CLIError(f"--input-shape gives input {name!r} twice; give each input once")
        shapes[name] = parse_shape(dims, f"--input-shape {name}=")
    return shapes


def _onnx_inputs(path: str) -> dict[str, list] | None:
    """{input name: dims (int, or str/None for dynamic)} of an ONNX file; None if it cannot be read."""
    import onnx

    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception:
        return None  # bench reports unreadable files with its own message
    initializers = {t.name for t in graph.initializer}
    out = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        out[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    return out


def check_input_shapes(paths: dict[str, str], shapes: dict[str, tuple[int, ...]]) -> None:
    """Given shapes must name an input and fit it; every dynamic dim (beyond a batch dim 0) needs one."""
    signatures = {path: _onnx_inputs(path) for path in paths.values()}
    names = {name for inputs in signatures.values() if inputs for name in inputs}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise CLIError(f"--input-shape names {unknown}, which no model has as an input; inputs are {sorted(names)}")
    for path, inputs in signatures.items():
        for name, dims in (inputs or {}).items():
            example = ",".join(str(d) if isinstance(d, int) and d > 0 else "N" for d in dims)
            given = shapes.get(name)
            if given is None:
                dynamic = [k for k, d in enumerate(dims) if k > 0 and not (isinstance(d, int) and d > 0)]
                if dynamic:
                    raise CLIError(f"{path}: input {name!r} has dynamic dim {dynamic[0]} ({dims[dynamic[0]]!r}); "
                                   f"pass --input-shape {name}={example} with a size for every dim")
                continue
            fixed = [(k, d) for k, d in enumerate(dims) if isinstance(d, int) and d > 0]
            if len(given) != len(dims) or any(given[k] != d for k, d in fixed):
                raise CLIError(f"{path}: --input-shape {name}={','.join(map(str, given))} does not fit input "
                               f"{name!r} of shape {dims}; pass --input-shape {name}={example}")


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
    from .latency import random_calibration
    from .quantize import onnx_inputs

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


# ----------------------------------------------------------------------------- demo


#: int8 vs fp32 cosine floor when int8 is calibrated on random inputs for timing (demo, bench)
TIMING_MIN_COSINE = 0.9


def default_demo_runtimes() -> str:
    """ORT always, OpenVINO when installed; ExecuTorch is opt-in (lowering ResNet-50 takes 20-100 s)."""
    return ",".join(r.value for r in (Runtime.ORT, Runtime.OPENVINO) if r.installed())


def cmd_demo(args) -> int:
    progress = Progress(args.quiet)
    runtimes = parse_runtimes(args.runtime or default_demo_runtimes())
    for runtime in runtimes:
        runtime.version()
    out_path = args.out or tempfile.mkdtemp(prefix="graphprune-demo-")
    try:
        return _demo_into(args, runtimes, out_path, progress)
    except BaseException:
        if not args.out:
            shutil.rmtree(out_path, ignore_errors=True)  # the temporary directory we made, nothing else
        raise


def _demo_artifacts(out: StagedDirectory, runtime: Runtime, loaded: LoadedModel, pruned, calibration) -> dict:
    """{variant: file} of original, pruned and pruned+int8 for one runtime (ONNX files are already staged)."""
    onnx_files = {"original": out.file("original.onnx"), "pruned": out.file("model.onnx"),
                  "pruned+int8": out.file("model.int8.onnx")}
    if runtime is Runtime.ORT:
        return onnx_files
    if runtime is Runtime.OPENVINO:
        from .runtimes import export_openvino

        return {v: export_openvino(path, loaded.inputs, path[:-len(".onnx")] + ".xml",
                                   min_cosine=TIMING_MIN_COSINE).xml_path for v, path in onnx_files.items()}
    from .runtimes import export_executorch

    return {"original": export_executorch(loaded.model, loaded.inputs, out.file("original.pte")).path,
            "pruned": export_executorch(pruned, loaded.inputs, out.file("model.pte")).path,
            "pruned+int8": export_executorch(pruned, loaded.inputs, out.file("model.int8.pte"),
                                             quantize=calibration, min_cosine=TIMING_MIN_COSINE).path}


def demo_table(reports) -> str:
    """dense -> pruned -> pruned+int8 per runtime: p50 and speed-up over dense."""
    lines = [f"{'runtime':28s}{'dense ms':>10s}{'pruned ms':>11s}{'pruned+int8 ms':>16s}{'pruned x':>10s}"
             f"{'pruned+int8 x':>15s}"]
    for r in reports:
        p50 = {row.name: row.p50_ms for row in r.rows}
        label = f"{r.runtime.label} {r.runtime_version}" + (f" ({r.profile.name})" if r.profile.name != "edge" else "")
        lines.append(f"{label:28s}{p50['original']:10.2f}{p50['pruned']:11.2f}{p50['pruned+int8']:16.2f}"
                     f"{p50['original'] / p50['pruned']:10.2f}{p50['original'] / p50['pruned+int8']:15.2f}")
    return "\n".join(lines)


def _demo_into(args, runtimes, out_path: str, progress: Progress) -> int:
    """demo's work: prune, export, quantise, benchmark on every runtime, plot; all staged, then written at once."""
    from .latency import random_calibration
    from .quantize import quantize_onnx

    prune_args = argparse.Namespace(model=args.model, input_shape=None, ratio=args.ratio, importance="l2",
                                    scope="local", ignore=[], round_to=args.round_to, target=args.target,
                                    calibration_batches=1)
    with StagedDirectory(out_path, replace=args.force) as out:
        summary, loaded, result = prune_loaded(prune_args, out, progress)
        calibration = random_calibration(loaded.inputs, 4)
        with progress.step("quantising the pruned model to int8 (static QDQ, 4 random calibration batches)"):
            # random weights and random calibration data: int8 here is for timing, so the floor is low
            q = quantize_onnx(out.file("model.onnx"), out.file("model.int8.onnx"), calibration,
                              min_cosine=TIMING_MIN_COSINE)
        macs = {"original": summary["report"]["macs_before"], "pruned": summary["report"]["macs_after"],
                "pruned+int8": summary["report"]["macs_after"]}
        runs = [(runtime, timing.EDGE) for runtime in runtimes] + [(Runtime.ORT, timing.CPU)]
        reports = []
        for runtime, profile in runs:
            with progress.step(f"building and benchmarking the {runtime.label} files, profile {profile.name}"):
                variants = _demo_artifacts(out, runtime, loaded, result.model, calibration)
                report = timing.benchmark(variants, profile, runtime=runtime, warmup=args.warmup,
                                             repeats=args.repeats, macs=macs)
            # the files were timed in the staging directory; the report names where they will live
            report = dataclasses.replace(report, rows=tuple(
                dataclasses.replace(r, path=os.path.join(out_path, os.path.basename(r.path))) for r in report.rows))
            print()
            print(report.format_table())
            reports.append(report)
        print(f"\nint8 calibrated on 4 random batches (timing only; cosine vs fp32 {q.cosine:.4f}); "
              f"{args.model} at ratio {args.ratio}:")
        print(demo_table(reports))
        write_json(out.file("bench.json"), [r.to_json() for r in reports])
        try:
            timing.plot_latency_vs_macs([r for r in reports if r.profile.name == "edge"],
                                           out.file("latency_vs_macs.png"))
        except GraphPruneError as exc:
            progress.note(f"no plot: {one_line(exc)}")
        written = out.commit()
    print(f"\nwrote {', '.join(written)} to {out_path}")
    return 0


# ----------------------------------------------------------------------------- parser


def version_text() -> str:
    try:
        version = importlib.metadata.version("graphprune")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    try:
        ort = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        ort = "not installed"
    return f"graphprune {version} (torch {torch.__version__}, onnxruntime {ort}, python {platform.python_version()})"


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="a built-in model name (graphprune explain --list) or package.module:factory, a function "
                        "returning an eager nn.Module (not torch.jit.script/trace)")
    p.add_argument("--input-shape", metavar="D0,D1,...",
                   help="shape of the random example input, e.g. 1,3,224,224 (required for package.module:factory; "
                        "a built-in model defaults to its own)")


def _add_out(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--out", required=required, metavar="DIR",
                   help="output directory; missing parents are created; it must not exist or be empty"
                        + ("" if required else " (default: a new temporary directory)"))
    p.add_argument("--force", action="store_true",
                   help="replace a non-empty --out directory whole (the old one is deleted after the new one is "
                        "complete)")


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines on stderr (progress is shown only when stderr is a terminal)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list every group that rounding to the target's channel steps changed (default: the first four)")


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="kept channel counts become multiples of N (overrides --target)")
    p.add_argument("--target", default="auto", choices=TARGETS,
                   help="deployment target whose channel-count rules pick the rounding (default auto: ort-x86 on "
                        "x86-64, else xnnpack)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="graphprune", description="Structured pruning as a torch.fx compiler pass: "
                                     "physically smaller models, ONNX export, ONNX Runtime benchmarks.")
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print graphprune's version (and torch's, onnxruntime's) and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prune", help="prune a model and write ONNX, a reloadable .pt2, plan.json and report.json",
                       description="Prune MODEL and write original.onnx, model.onnx, model.pt2, plan.json and "
                                   "report.json to --out.")
    _add_model(p)
    p.add_argument("--ratio", type=float, required=True, help="share of channels removed per group, in [0, 1)")
    p.add_argument("--importance", default="l2", choices=sorted(BUILTIN),
                   help="how channels are ranked (default l2). activation and apoz are data-driven: the CLI scores "
                        "them on --calibration-batches batches of RANDOM inputs of the input shape, a proxy for real "
                        "data (for real data use the Python API). taylor needs labels and a loss and is refused "
                        "here: use the Python API")
    p.add_argument("--calibration-batches", type=int, default=8, metavar="N",
                   help="random batches for --importance activation/apoz (default 8)")
    p.add_argument("--scope", default="local", choices=["local", "global"],
                   help="local: every group loses the ratio; global: channels of all groups are ranked together")
    _add_target(p)
    p.add_argument("--ignore", action="append", metavar="NAME",
                   help="module name whose output channels are kept (names as `graphprune explain` prints them); "
                        "repeat the option or give NAME,NAME")
    _add_out(p)
    _add_quiet(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("apply", help="replay a plan.json on a model and write the same files as prune",
                       description="Rebuild the pruned architecture of PLAN (a plan.json from graphprune prune) from "
                                   "MODEL, e.g. with retrained weights, and write the same files as prune.")
    p.add_argument("plan", metavar="PLAN", help="a plan.json written by graphprune prune")
    _add_model(p)
    _add_out(p)
    _add_quiet(p)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("explain", help="print the channel groups, the modules in them and why any are frozen")
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="a built-in model name or package.module:factory (omit with --list)")
    p.add_argument("--input-shape", metavar="D0,D1,...", help="shape of the random example input, e.g. 1,3,224,224")
    p.add_argument("--list", action="store_true", help="list the built-in models and their input shapes")
    _add_quiet(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("bench", help="time models or ONNX files in ONNX Runtime, OpenVINO, ExecuTorch; fp32, int8")
    p.add_argument("sources", nargs="+", metavar="MODEL_OR_ONNX",
                   help="ONNX files (.onnx) or models (a built-in name or package.module:factory) to time")
    p.add_argument("--input-shape", action="append", metavar="[NAME=]D0,D1,...",
                   help="NAME=dims: concrete shape for an ONNX input with dynamic dims, e.g. input_0=1,3,224,224 "
                        "(repeatable; a dynamic dim 0 defaults to 1); dims alone: the input shape of a "
                        "package.module:factory MODEL")
    p.add_argument("--runtime", default="ort", metavar="R[,R...]",
                   help="ort, openvino, executorch, comma-separated (default ort); OpenVINO and ExecuTorch need "
                        "pip install 'graphprune[edge]'; ExecuTorch needs a MODEL, not an ONNX file")
    p.add_argument("--precision", default="fp32", metavar="P[,P...]",
                   help="fp32, int8, comma-separated (default fp32); int8 is static post-training quantisation "
                        "calibrated on RANDOM batches (timing only)")
    p.add_argument("--calibration-batches", type=int, default=4, metavar="N",
                   help="random batches for int8 calibration (default 4)")
    p.add_argument("--plot", metavar="PNG", help="also plot p50 latency against MACs per runtime (needs matplotlib)")
    p.add_argument("--profile", action="append", choices=sorted(PROFILES),
                   help="cpu (all cores) or edge (one pinned thread); repeatable; default edge")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per model (default 10)")
    p.add_argument("--repeats", type=int, default=50, help="timed runs per model (default 50)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the timed runs are split into (default 5)")
    p.add_argument("--json", metavar="FILE", help="also write the reports as JSON to FILE")
    _add_quiet(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help=f"prune {DEFAULT_MODEL} at ratio 0.5, export, check parity, benchmark")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in model name (default {DEFAULT_MODEL})")
    p.add_argument("--ratio", type=float, default=0.5, help="share of channels removed per group (default 0.5)")
    _add_target(p)
    p.add_argument("--runtime", default=None, metavar="R[,R...]",
                   help="runtimes to show dense -> pruned -> pruned+int8 on (default: ort, and openvino when "
                        "installed); add executorch to include ExecuTorch-XNNPACK (slow: lowering takes minutes)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per model (default 10)")
    p.add_argument("--repeats", type=int, default=50, help="timed runs per model (default 50)")
    _add_out(p, required=False)
    _add_quiet(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GraphPruneError as exc:
        print(f"graphprune: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a graphprune bug: still one line, never a traceback on the terminal
        print(f"graphprune: internal error: {type(exc).__name__}: {one_line(exc)} "
              "(please report this with the command line)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
