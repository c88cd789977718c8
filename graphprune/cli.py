"""The `graphprune` command: prune, explain, bench, demo.

MODEL is a built-in model name (`graphprune explain --list` shows them) or
`package.module:factory`, a function returning an nn.Module. Errors print one line on
stderr and exit non-zero; output directories are filled atomically (all files or none).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from . import bench as bench_mod
from .analysis import analyse
from .api import prune_graph
from .atomic import write_json
from .errors import GraphPruneError
from .export import export_onnx, save_torch_artifact
from .models import DEFAULT_MODEL, ZOO, get_model
from .report import PruneReport

PROFILES = {"cpu": bench_mod.CPU, "edge": bench_mod.EDGE}


class CLIError(GraphPruneError):
    """A command-line argument is invalid."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    model: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]


def _progress(step: str) -> None:
    print(f"[graphprune] {step}", file=sys.stderr, flush=True)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise CLIError(f"--input-shape {text!r} is not a comma-separated list of positive ints; e.g. 1,3,224,224")
    return shape


def load_model(spec: str, input_shape: str | None) -> LoadedModel:
    """A built-in model by name, or `package.module:factory`."""
    shape = parse_shape(input_shape) if input_shape else None
    if ":" not in spec:
        zoo = get_model(spec)
        torch.manual_seed(0)
        inputs = (torch.randn(shape, generator=torch.Generator().manual_seed(1)),) if shape else zoo.example_inputs()
        return LoadedModel(spec, zoo.build(), inputs)
    module_name, _, factory_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise CLIError(f"cannot import module {module_name!r} for MODEL {spec!r}: {type(exc).__name__}: {exc}; "
                       "check the module is on PYTHONPATH") from exc
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise CLIError(f"module {module_name!r} has no callable {factory_name!r}; MODEL must be package.module:factory")
    try:
        torch.manual_seed(0)
        model = factory()
    except Exception as exc:
        raise CLIError(f"factory {spec} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise CLIError(f"factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    if shape is None:
        raise CLIError(f"MODEL {spec!r} is not built in, so its input shape is unknown; pass --input-shape e.g. 1,3,224,224")
    return LoadedModel(spec, model.eval(), (torch.randn(shape, generator=torch.Generator().manual_seed(1)),))


def _writable_parent(out: str) -> str:
    parent = os.path.dirname(os.path.abspath(out)) or "."
    target = out if os.path.isdir(out) else parent
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out {out!r} exists and is not a directory; pass a directory path")
    if not os.path.isdir(target) or not os.access(target, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write to {target!r}; pass an --out directory whose parent exists and is writable")
    return parent


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


def cmd_prune(args) -> int:
    parent = _writable_parent(args.out)
    loaded = load_model(args.model, args.input_shape)
    _progress(f"pruning {loaded.name} at ratio {args.ratio} ({args.importance}, {args.scope} scope)")
    t0 = time.perf_counter()
    result = prune_graph(loaded.model, loaded.inputs, ratio=args.ratio, importance=args.importance, scope=args.scope,
                         ignore=tuple(args.ignore), round_to=args.round_to, target=args.target)
    _progress(f"pruned in {time.perf_counter() - t0:.2f} s; exporting to ONNX and checking parity")
    staging = tempfile.mkdtemp(prefix=".graphprune-", dir=parent)
    try:
        original = export_onnx(loaded.model, loaded.inputs, os.path.join(staging, "original.onnx"))
        pruned = export_onnx(result.model, loaded.inputs, os.path.join(staging, "model.onnx"))
        _progress("saving the reloadable PyTorch model")
        fmt = save_torch_artifact(result.model, loaded.inputs, os.path.join(staging, "model.pt2"))
        with open(os.path.join(staging, "plan.json"), "w") as f:
            f.write(result.plan.to_json())
        summary = {
            "model": loaded.name, "ratio": args.ratio, "importance": args.importance, "scope": args.scope,
            "round_to": args.round_to, "target": args.target, "input_shape": list(loaded.inputs[0].shape),
            "report": result.report.to_json(),
            "onnx": {"original_bytes": original.file_bytes, "pruned_bytes": pruned.file_bytes,
                     "pruned_max_abs_diff": pruned.max_abs_diff, "opset": pruned.opset},
            "torch_artifact": {"file": "model.pt2", "format": fmt},
        }
        with open(os.path.join(staging, "report.json"), "w") as f:
            json.dump(summary, f, indent=1)
        os.makedirs(args.out, exist_ok=True)
        for name in sorted(os.listdir(staging)):
            os.replace(os.path.join(staging, name), os.path.join(args.out, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(result.report.summary())
    print(before_after_table(result.report, original.file_bytes, pruned.file_bytes, pruned.max_abs_diff))
    print(f"wrote {', '.join(sorted(os.listdir(args.out)))} to {args.out}")
    return 0


def cmd_explain(args) -> int:
    if args.list:
        for name, spec in sorted(ZOO.items()):
            print(f"{name:22s} input {'x'.join(map(str, spec.input_shape))}")
        return 0
    if not args.model:
        raise CLIError("explain needs MODEL (or --list)")
    loaded = load_model(args.model, args.input_shape)
    print(analyse(loaded.model, loaded.inputs).explain())
    return 0


def cmd_bench(args) -> int:
    variants = {}
    for path in args.onnx:
        name = os.path.splitext(os.path.basename(path))[0]
        while name in variants:
            name += "'"
        variants[name] = path
    profiles = [PROFILES[p] for p in args.profile] if args.profile else [bench_mod.EDGE]
    reports = []
    for profile in profiles:
        _progress(f"benchmarking {len(variants)} model(s), profile {profile.name}")
        report = bench_mod.benchmark(variants, profile, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds)
        print(report.format_table())
        reports.append(report)
    if args.json:
        data = [r.to_json() for r in reports]
        write_json(args.json, data)
    return 0


def cmd_demo(args) -> int:
    out = args.out or tempfile.mkdtemp(prefix="graphprune-demo-")
    prune_args = argparse.Namespace(model=args.model, input_shape=None, ratio=args.ratio, importance="l2",
                                    scope="local", ignore=[], round_to=args.round_to, target=args.target, out=out)
    cmd_prune(prune_args)
    with open(os.path.join(out, "report.json")) as f:
        summary = json.load(f)
    macs = {"original": summary["report"]["macs_before"], "pruned": summary["report"]["macs_after"]}
    variants = {"original": os.path.join(out, "original.onnx"), "pruned": os.path.join(out, "model.onnx")}
    reports = []
    for profile in (bench_mod.EDGE, bench_mod.CPU):
        _progress(f"benchmarking original vs pruned in ONNX Runtime, profile {profile.name}")
        report = bench_mod.benchmark(variants, profile, warmup=args.warmup, repeats=args.repeats, macs=macs)
        print()
        print(report.format_table())
        reports.append(report)
    write_json(os.path.join(out, "bench.json"), [r.to_json() for r in reports])
    try:
        reports[0].plot(os.path.join(out, "latency_vs_macs.png"))
    except GraphPruneError as exc:
        _progress(f"no plot: {exc}")
    print(f"\nfiles in {out}: {', '.join(sorted(os.listdir(out)))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphprune", description="Structured pruning as a torch.fx compiler pass.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model and write ONNX, a reloadable .pt2, plan.json and report.json")
    p.add_argument("model", help="built-in model name or package.module:factory")
    p.add_argument("--ratio", type=float, required=True, help="share of channels removed per group, in [0, 1)")
    p.add_argument("--importance", default="l2", choices=["l1", "l2", "bn_scale", "random", "flops_l2"])
    p.add_argument("--scope", default="local", choices=["local", "global"])
    p.add_argument("--round-to", type=int, default=None, help="kept channel counts become multiples of N (overrides --target)")
    p.add_argument("--target", default="auto", choices=["auto", "ort-x86", "xnnpack", "arm", "none"],
                   help="deployment target whose channel-count rules pick the rounding (default auto: ort-x86 on x86-64)")
    p.add_argument("--ignore", nargs="*", default=[], help="qualified module names whose output channels are kept")
    p.add_argument("--input-shape", help="e.g. 1,3,224,224 (required for package.module:factory)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("explain", help="print the channel groups and why any are frozen")
    p.add_argument("model", nargs="?")
    p.add_argument("--input-shape")
    p.add_argument("--list", action="store_true", help="list the built-in models")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("bench", help="time ONNX models in ONNX Runtime")
    p.add_argument("onnx", nargs="+")
    p.add_argument("--profile", action="append", choices=sorted(PROFILES), help="cpu or edge (repeatable; default edge)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="write the reports as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help=f"prune {DEFAULT_MODEL} at ratio 0.5, export, check parity, benchmark")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--round-to", type=int, default=None)
    p.add_argument("--target", default="auto", choices=["auto", "ort-x86", "xnnpack", "arm", "none"])
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", help="output directory (default: a new temporary directory)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GraphPruneError as exc:
        print(f"graphprune: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback on the terminal
        print(f"graphprune: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
              "(please report this with the command line)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
