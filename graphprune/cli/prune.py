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
from ..export import PARITY_ATOL, ExportResult, export_onnx, save_torch_artifact
from ..importance import BUILTIN, Taylor
from ..report import PruneReport
from .budget import CLIBudget, read_budget
from .distil import Family, RecoveryData, check_data_flags, check_recovery_args, recovered, recovery_data
from .hf import own_tokenizer
from .messages import CLIError, Progress, one_line, toolchain_errors
from .models import LoadedModel, load_model, random_inputs
from .stream import cmd_prune_stream


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


def _calibration(args, loaded: LoadedModel, data: RecoveryData | None) -> list[tuple[torch.Tensor, ...]]:
    """The first --calibration-batches batches of --images/--text, else random batches shaped like the example
    inputs, for the data-driven criteria (see --help)."""
    if not BUILTIN[args.importance].needs_data:
        return []
    if data is not None:
        return [(b,) for b in data.batches[:args.calibration_batches]]
    shapes = [tuple(t.shape) for t in loaded.inputs]
    return [random_inputs(shapes, 100 + k, loaded.vocab_size) for k in range(args.calibration_batches)]


def family(loaded: LoadedModel) -> Family:
    return Family(loaded.tokenizer, loaded.mean, loaded.std, loaded.static_batch)


def read_data(args, loaded: LoadedModel, progress: Progress) -> RecoveryData | None:
    """The batches of --images or --text for this model (None when neither is given)."""
    if not (args.images or args.text):
        return None
    return recovery_data(progress, args, tuple(loaded.inputs[0].shape), loaded.vocab_size, family(loaded))


def _bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def before_after_table(report: PruneReport, original_bytes: int, pruned: ExportResult) -> str:
    rows = [
        ("params", f"{report.params_before:,}", f"{report.params_after:,}", report.params_after / report.params_before),
        ("MACs", f"{report.macs_before:,}", f"{report.macs_after:,}", report.macs_after / max(report.macs_before, 1)),
        ("ONNX file", _bytes(original_bytes), _bytes(pruned.file_bytes), pruned.file_bytes / original_bytes),
    ]
    lines = [f"{'':12s}{'original':>18s}{'pruned':>18s}{'ratio':>8s}"]
    lines += [f"{name:12s}{a:>18s}{b:>18s}{r:8.3f}" for name, a, b, r in rows]
    lines.append(f"ORT parity (pruned ONNX vs PyTorch): max abs diff {pruned.max_abs_diff:.2e}")
    if pruned.largest_output < PARITY_ATOL:
        lines.append(f"warning: the pruned model's outputs on the example are all below {PARITY_ATOL:g} in size "
                     f"(largest {pruned.largest_output:.2e}), so this parity shows little; the weights may be untrained")
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
        original = export_onnx(loaded.module, loaded.inputs, out.file("original.onnx"))
        pruned = export_onnx(result.model, loaded.inputs, out.file("model.onnx"))
    with progress.step("saving the reloadable PyTorch model (model.pt2)"), \
            toolchain_errors(ExportError, "saving model.pt2", fix):
        fmt = save_torch_artifact(result.model, loaded.inputs, out.file("model.pt2"))
    write_atomically(out.file("plan.json"), lambda f: f.write(result.plan.to_json().encode()))
    summary = {
        "model": loaded.name, **settings, "input_shape": list(loaded.inputs[0].shape), "vocab_size": loaded.vocab_size,
        "report": result.report.to_json(),
        "onnx": {"original_bytes": original.file_bytes, "pruned_bytes": pruned.file_bytes,
                 "pruned_max_abs_diff": pruned.max_abs_diff, "pruned_largest_output": pruned.largest_output,
                 "opset": pruned.opset},
        "torch_artifact": {"file": "model.pt2", "format": fmt},
    }
    if loaded.save_native is not None:
        with progress.step("saving the pruned model in its own format"):
            summary["native"] = loaded.save_native(result, out)
    write_json(out.file("report.json"), summary)
    print(result.report.summary(full=settings.get("verbose", False)))
    print(before_after_table(result.report, original.file_bytes, pruned))
    if "native" in summary:
        print(summary["native"]["line"])
    return summary


def prune_into(args, out: StagedDirectory, progress: Progress) -> dict:
    """Load, prune and write every artifact into the staging directory; returns report.json's content."""
    return prune_loaded(args, out, progress)[0]


def _check_data_use(args, recover_steps: int) -> None:
    """--images/--text are read by recovery, a data-driven --importance, or a Hugging Face text model's example."""
    if recover_steps:
        check_recovery_args(args, own_tokenizer(args.model))
        return
    check_data_flags(args, own_tokenizer(args.model))
    reads = BUILTIN[args.importance].needs_data or (args.text and own_tokenizer(args.model))
    if (args.images or args.text) and not reads:
        raise CLIError(f"{'--images' if args.images else '--text'} feeds a data-driven --importance (activation, apoz, "
                       f"wanda) or --recover-steps; with --importance {args.importance} nothing would read it")


def _prune(args, budget: CLIBudget, loaded: LoadedModel, calibration, ignore) -> tuple:
    """(PruneResult, settings of a latency budget) for the budget."""
    common = dict(importance=args.importance, scope=args.scope, ignore=tuple(ignore), round_to=args.round_to,
                  target=args.target, calibration=calibration)
    if budget.latency_ms is None:
        return graphprune.prune_graph(loaded.model, loaded.inputs, **budget.keywords(), **common), {}
    from ..latency import prune_to_latency

    got = prune_to_latency(loaded.module, loaded.inputs, budget.latency_ms, runtime=budget.runtime, **common)
    return got.result, {"latency_ms": {"requested": got.requested_ms, "predicted": got.predicted_ms,
                                       "measured": got.measured_ms, "original": got.original_ms}}


def prune_loaded(args, out: StagedDirectory, progress: Progress) -> tuple[dict, LoadedModel, "graphprune.PruneResult"]:
    """prune_into, also returning the loaded model and the prune result (the demo builds more files from them)."""
    _check_importance(args)
    budget = read_budget(args)
    recover_steps = getattr(args, "steps", 0)
    _check_data_use(args, recover_steps)
    with progress.step(f"loading {args.model}"):
        loaded = load_model(args.model, args.input_shape, args.vocab_size, args.text, args.max_length)
    data = read_data(args, loaded, progress)
    calibration = _calibration(args, loaded, data)
    if calibration:
        source = f"{data.samples} of {args.images or args.text}" if data else "RANDOM batches"
        progress.note(f"--importance {args.importance} scores channels on {len(calibration)} batches of {source}")
    ignore = _ignore_list(args.ignore)
    result, extra = run_step(progress, f"tracing and pruning {loaded.name} {budget.describe()} ({args.importance}, "
                                       f"{args.scope} scope)", lambda: _prune(args, budget, loaded, calibration, ignore))
    settings = {**budget.to_json(), "importance": args.importance, "scope": args.scope, "round_to": args.round_to,
                "target": result.report.target, "target_requested": args.target, "ignore": ignore,
                "calibration_batches": len(calibration),
                "calibration_data": (args.images or args.text) if data and calibration else ("random" if calibration
                                                                                                else None),
                "verbose": getattr(args, "verbose", False), **extra}
    if recover_steps:
        result, recovery = recovered(progress, result, data, args)
        settings["recovery"] = recovery.to_json()
    return write_outputs(out, loaded, result, settings, progress), loaded, result


def cmd_prune(args) -> int:
    if args.layers is not None and not args.stream:
        raise CLIError("--layers removes decoder layers of a Hugging Face checkpoint directory: add --stream (in "
                       "Python, graphprune.depth.prune_layers prunes a model in memory)")
    if args.stream:
        return cmd_prune_stream(args)
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
