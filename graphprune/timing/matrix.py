"""Several models on several runtimes at several precisions: one interleaved benchmark per runtime.

:func:`benchmark_models` writes every model's artefact for every (runtime, precision) with
:func:`graphprune.runtimes.build_artifacts` (each checked in its runtime), then runs ONE
:func:`~graphprune.timing.harness.benchmark` per runtime in which all variants of that runtime
(every model at every precision) are interleaved, so drift hits them alike. A variant is named
after its model, with ``+int8`` for int8. A model given as an ONNX file runs in ORT and OpenVINO
only (ExecuTorch needs the PyTorch model).
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Iterable, Mapping, Sequence


from ..atomic import write_atomically
from ..errors import BenchError
from ..quantize import quantize_onnx
from ..runtimes.artifacts import build_artifacts
from ..runtimes.kinds import Precision, Runtime, parse_precisions, parse_runtimes
from .harness import EDGE, BenchReport, Profile, benchmark

__all__ = ["variant_name", "benchmark_models", "plot_latency_vs_macs"]




def variant_name(model: str, precision: Precision) -> str:
    """The variant of ``model`` at ``precision`` in a report: the name, or ``name+int8``."""
    return model if precision is Precision.FP32 else f"{model}+int8"


def _onnx_artifacts(name: str, path: str, directory: str, runtimes: Sequence[Runtime],
                    precisions: Sequence[Precision], calibration: Any,
                    min_cosine: float) -> dict[tuple[Runtime, Precision], str]:
    files = {Precision.FP32: path}
    if Precision.INT8 in precisions:
        if calibration is None:
            raise BenchError(f"int8 of {name!r} needs calibration batches (calibration=[...])")
        files[Precision.INT8] = os.path.join(directory, f"{name}.int8.onnx")
        quantize_onnx(path, files[Precision.INT8], calibration, min_cosine=min_cosine)
    return {(r, p): files[p] for r in runtimes for p in precisions}


def benchmark_models(
    models: Mapping[str, Any],
    runtimes: Iterable[Runtime] | str = (Runtime.ORT,),
    precisions: Iterable[Precision] | str = (Precision.FP32,),
    profile: Profile = EDGE,
    *,
    calibration: Mapping[str, Iterable[Any]] | Iterable[Any] | None = None,
    directory: str | os.PathLike | None = None,
    macs: Mapping[str, int] | None = None,
    params: Mapping[str, int] | None = None,
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 5,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    min_cosine: float = 0.99,
) -> tuple[BenchReport, ...]:
    """One report per runtime (in the given order) over every model at every precision.

    ``models`` maps names to ``(module, example_inputs)`` or to an ONNX file path. ``calibration``:
    int8 calibration batches, one list for all models or ``{model name: batches}``. ``directory``
    keeps the artefacts (default: a temporary directory, removed afterwards). ``macs`` / ``params``
    are per model name and carried to each of its variants; ``input_shapes`` as in ``benchmark``;
    ``min_cosine``: the int8 vs fp32 floor of the artefact checks (lower it for random calibration data)
    """
    runtimes, precisions = parse_runtimes(runtimes), parse_precisions(precisions)
    if not models:
        raise BenchError("benchmark_models() needs at least one model: {name: (module, inputs) or path}")
    files_only = sorted(n for n, src in models.items() if isinstance(src, (str, os.PathLike)))
    if files_only and Runtime.EXECUTORCH in runtimes:
        raise BenchError(f"{files_only} are ONNX files; ExecuTorch needs the PyTorch model (a built-in model name "
                         "or package.module:factory on the command line), or leave executorch out")
    for runtime in runtimes:
        runtime.version()  # a missing runtime fails before any export
    with tempfile.TemporaryDirectory() as tmp:
        work = os.fspath(directory) if directory is not None else tmp
        os.makedirs(work, exist_ok=True)
        files: dict[tuple[str, Runtime, Precision], str] = {}
        for name, source in models.items():
            batches = calibration.get(name) if isinstance(calibration, Mapping) else calibration
            if isinstance(source, (str, os.PathLike)):
                built = _onnx_artifacts(name, os.fspath(source), work, runtimes, precisions, batches, min_cosine)
            else:
                module, inputs = source
                built = build_artifacts(module, inputs, work, name, runtimes, precisions, calibration=batches,
                                        min_cosine=min_cosine)
            files.update({(name, r, p): path for (r, p), path in built.items()})
        reports = []
        for runtime in runtimes:
            variants = {variant_name(m, p): files[m, runtime, p] for m in models for p in precisions}
            per_variant = {variant_name(m, p): m for m in models for p in precisions}
            reports.append(benchmark(
                variants, profile, runtime=runtime, warmup=warmup, repeats=repeats, rounds=rounds,
                input_shapes=input_shapes,
                macs={v: macs[m] for v, m in per_variant.items() if macs and m in macs},
                params={v: params[m] for v, m in per_variant.items() if params and m in params}))
    return tuple(reports)


def plot_latency_vs_macs(reports: Sequence[BenchReport], path: str | os.PathLike) -> None:
    """A PNG of p50 latency against MACs, one series per runtime (fp32 dots, int8 crosses); needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BenchError("plotting needs matplotlib: pip install matplotlib (or pip install 'graphprune[plot]')") from exc
    if not any(r.macs is not None for report in reports for r in report.rows):
        raise BenchError(f"plot {os.fspath(path)}: no variant has MACs; pass macs={{model: macs}}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for report in reports:
            for int8, marker in ((False, "o"), (True, "x")):
                rows = [r for r in report.rows if r.macs is not None and r.name.endswith("+int8") == int8]
                if rows:
                    line, = ax.plot([r.macs / 1e9 for r in rows], [r.p50_ms for r in rows], marker, linestyle="",
                                    label=f"{report.runtime.label} {report.runtime_version}"
                                          f"{' int8' if int8 else ' fp32'}")
                    for r in rows:
                        ax.annotate(r.name, (r.macs / 1e9, r.p50_ms), textcoords="offset points", xytext=(4, 4),
                                    fontsize=7, color=line.get_color())
        cpu = reports[0].cpu if reports else ""
        ax.set_xlabel("GMACs")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_title(f"latency vs MACs, {reports[0].profile.intra_op_threads} thread(s), {cpu}", fontsize=9)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        write_atomically(os.fspath(path), lambda f: fig.savefig(f, format="png", dpi=120))
    finally:
        plt.close(fig)
