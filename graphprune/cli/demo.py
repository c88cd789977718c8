"""graphprune demo: prune the default model, export it, quantise it to int8 and time dense -> pruned ->
pruned+int8 on every runtime given (ORT, and OpenVINO when installed, by default), all files written at once."""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile

from .. import timing
from ..atomic import StagedDirectory, write_json
from ..errors import GraphPruneError
from ..runtimes.kinds import Runtime, parse_runtimes
from .bench import TIMING_MIN_COSINE
from .messages import Progress, one_line
from .models import LoadedModel
from .prune import prune_loaded


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
        from ..runtimes import export_openvino

        return {v: export_openvino(path, loaded.inputs, path[:-len(".onnx")] + ".xml",
                                   min_cosine=TIMING_MIN_COSINE).xml_path for v, path in onnx_files.items()}
    from ..runtimes import export_executorch

    return {"original": export_executorch(loaded.module, loaded.inputs, out.file("original.pte")).path,
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
    from ..latency import random_calibration
    from ..quantize import quantize_onnx

    prune_args = argparse.Namespace(model=args.model, input_shape=None, ratio=args.ratio, importance="l2",
                                    scope="local", ignore=[], round_to=args.round_to, target=args.target,
                                    calibration_batches=1, vocab_size=None, target_params=None, target_macs=None,
                                    target_latency_ms=None, images=None, text=None, tokenizer=None, max_length=None,
                                    mean=None, std=None, batch_size=16)
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
