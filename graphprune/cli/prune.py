"""graphprune prune and graphprune apply: prune a model (or replay a plan.json on it) and write its files.

Both write original.onnx, model.onnx (parity-checked in ONNX Runtime), model.pt2, plan.json and
report.json. An output directory is written whole or not at all: it is staged in a hidden sibling
directory created before any work (so an unwritable --out fails first), then renamed into place.
"""
from __future__ import annotations

import os

import torch

import graphprune
from ..atomic import StagedDirectory, write_atomically, write_json
from ..errors import ExportError, InputError
from ..export import export_onnx, save_torch_artifact
from ..importance import BUILTIN, Taylor
from ..report import PruneReport
from .distil import check_recovery_args, recovered, recovery_data
from .messages import CLIError, Progress, one_line, toolchain_errors
from .models import LoadedModel, load_model, random_inputs


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
    return [random_inputs(shapes, 100 + k, loaded.vocab_size) for k in range(args.calibration_batches)]


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


def staged_out(args) -> StagedDirectory:
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
        "model": loaded.name, **settings, "input_shape": list(loaded.inputs[0].shape), "vocab_size": loaded.vocab_size,
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
    recover_steps = getattr(args, "steps", 0)
    if recover_steps:
        check_recovery_args(args)
    with progress.step(f"loading {args.model}"):
        loaded = load_model(args.model, args.input_shape, args.vocab_size)
    data = recovery_data(progress, args, tuple(loaded.inputs[0].shape), loaded.vocab_size) if recover_steps else None
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
    if recover_steps:
        result, recovery = recovered(progress, result, data, args)
        settings["recovery"] = recovery.to_json()
    return write_outputs(out, loaded, result, settings, progress), loaded, result


def cmd_prune(args) -> int:
    progress = Progress(args.quiet)
    with staged_out(args) as out:
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
    with staged_out(args) as out:
        with progress.step(f"loading {args.model}"):
            loaded = load_model(args.model, args.input_shape, args.vocab_size)
        result = run_step(progress, f"tracing {loaded.name} and applying the plan",
                      lambda: graphprune.apply_plan(loaded.model, loaded.inputs, plan))
        write_outputs(out, loaded, result, {"plan": os.path.abspath(args.plan),
                                            "verbose": getattr(args, "verbose", False)}, progress)
        written = out.commit()
    print(f"wrote {', '.join(written)} to {args.out}")
    return 0
