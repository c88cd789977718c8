"""Benchmark model files in a CPU runtime with a protocol whose numbers can be compared.

Runtimes (:class:`graphprune.runtimes.Runtime`): ONNX Runtime (``.onnx``, the default), OpenVINO
(``.xml`` IR or ``.onnx``; CPU plugin, inference precision pinned to f32, ``INFERENCE_NUM_THREADS``
= the profile's threads, one stream, latency hint) and ExecuTorch (``.pte``; XNNPACK threadpool
resized to the profile's threads). Everything below holds for each; the ORT session options apply
to ORT only.

Protocol of :func:`benchmark` (every variant sees the same conditions):

* Session options: explicit ``intra_op_num_threads`` (the profile's), ``inter_op_num_threads=1``,
  ``ORT_SEQUENTIAL``, thread spinning off (``session.intra_op.allow_spinning=0`` and
  ``session.inter_op.allow_spinning=0``), the profile's graph optimisation level
  (``ORT_ENABLE_ALL`` by default), CPUExecutionProvider only.
* Timing runs in ONE child process (``sys.executable``), pinned to one core for a pinned
  profile (the calling process's affinity is never touched). Inputs are random, built
  from each model's input signature (seeded; a dynamic dim 0 is 1 unless ``input_shapes``
  says otherwise).
  Each variant gets ``warmup`` untimed runs, then ``rounds`` rounds; in each round every
  variant runs ``ceil(repeats / rounds)`` times back to back, and the order of the variants
  is rotated by one each round, so drift (thermal, frequency, noisy neighbours) hits all
  variants alike. Every run is timed with ``time.perf_counter_ns``; Python's GC is off
  while timing. p50/p90/mean are over all timed runs.
* Load time and peak memory: for each variant, a FRESH child process (same affinity and
  session options) imports onnxruntime, records its baseline (resident set, peak counter
  reset through ``/proc/self/clear_refs`` where allowed, else the peak so far), creates the
  session (timed: the load time, a cold start that includes onnxruntime's one-time
  per-process set-up, equal for every variant), runs 3 inferences and reports peak resident
  memory (``VmHWM``, or ``ru_maxrss``) minus baseline.
* File size is ``os.path.getsize``. MACs/params, when given, are carried through as is.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from graphprune.atomic import write_atomically
from graphprune.errors import BenchError
from graphprune.runtimes.artifacts import artifact_bytes
from graphprune.runtimes.kinds import Runtime

__all__ = ["Profile", "CPU", "EDGE", "BenchRow", "BenchReport", "benchmark", "cpu_name", "session_options", "pinned"]

GRAPH_OPTIMIZATION_LEVELS = (
    "ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_LAYOUT",
    "ORT_ENABLE_ALL",
)


@dataclass(frozen=True)
class Profile:
    """How ONNX Runtime is configured for a benchmark (see the module docstring)."""

    name: str
    intra_op_threads: int
    pin_core: bool = False
    graph_optimization_level: str = "ORT_ENABLE_ALL"

    def __post_init__(self) -> None:
        if not isinstance(self.intra_op_threads, int) or self.intra_op_threads < 1:
            raise BenchError(
                f"profile {self.name!r}: intra_op_threads must be an int >= 1, "
                f"got {self.intra_op_threads!r}"
            )
        if self.graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise BenchError(
                f"profile {self.name!r}: unknown graph_optimization_level "
                f"{self.graph_optimization_level!r}; use one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}"
            )


#: Server-like: every core (``os.cpu_count()``), no pinning.
CPU = Profile("cpu", intra_op_threads=os.cpu_count() or 1, pin_core=False)
#: Edge-like: one thread pinned to one core.
EDGE = Profile("edge", intra_op_threads=1, pin_core=True)


@dataclass(frozen=True)
class BenchRow:
    """Measurements of one variant. Latencies in ms; ``latencies_ms`` are the timed runs in order."""

    name: str
    path: str
    p50_ms: float
    p90_ms: float
    mean_ms: float
    load_ms: float
    peak_mem_bytes: int
    file_bytes: int
    runs: int
    macs: int | None = None
    params: int | None = None
    latencies_ms: tuple[float, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class BenchReport:
    """The result of :func:`benchmark`: the profile, the protocol used and one row per variant."""

    profile: Profile
    rows: tuple[BenchRow, ...]
    warmup: int
    repeats: int
    rounds: int
    pinned_core: int | None
    onnxruntime_version: str  # kept for old JSON readers: the runtime's version when it is ORT, else ""
    runtime: Runtime = Runtime.ORT
    runtime_version: str = ""
    cpu: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict; :meth:`from_json` inverts it."""
        d = asdict(self)
        d["runtime"] = self.runtime.value
        d["rows"] = [{**r, "latencies_ms": list(r["latencies_ms"])} for r in d["rows"]]
        d["protocol"] = {
            "inter_op_num_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL",
            "allow_spinning": False,
            "providers": ["CPUExecutionProvider"] if self.runtime is Runtime.ORT else [],
            "timer": "time.perf_counter_ns",
            "order": "warm-up per variant, then rounds with the variant order rotated each round",
        }
        return d

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "BenchReport":
        """Rebuild a report from :meth:`to_json` output (e.g. after ``json.load``)."""
        try:
            rows = tuple(
                BenchRow(**{**r, "latencies_ms": tuple(r["latencies_ms"])}) for r in data["rows"]
            )
            return cls(
                profile=Profile(**data["profile"]), rows=rows, warmup=data["warmup"],
                repeats=data["repeats"], rounds=data["rounds"], pinned_core=data["pinned_core"],
                onnxruntime_version=data["onnxruntime_version"],
                runtime=Runtime(data.get("runtime", "ort")),
                runtime_version=data.get("runtime_version", data["onnxruntime_version"]),
                cpu=data.get("cpu", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BenchError(
                f"not a BenchReport JSON ({type(exc).__name__}: {exc}); "
                "pass the dict written by BenchReport.to_json / write_json"
            ) from exc

    def write_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json` to ``path`` atomically (temp file + ``os.replace``)."""
        data = json.dumps(self.to_json(), indent=2).encode()
        write_atomically(os.fspath(path), lambda f: f.write(data))

    def format_table(self) -> str:
        """A plain-text table; ``p50 ratio`` is each variant's p50 over the first variant's."""
        p = self.profile
        pin = f"pinned to core {self.pinned_core}" if self.pinned_core is not None else "not pinned"
        settings = (f"{p.graph_optimization_level}, sequential, spinning off" if self.runtime is Runtime.ORT
                    else "f32 inference precision, 1 stream" if self.runtime is Runtime.OPENVINO
                    else "XNNPACK delegate")
        head = [
            f"{self.runtime.label} {self.runtime_version} on {self.cpu or 'unknown CPU'}",
            f"profile {p.name}: {p.intra_op_threads} thread(s), {pin}, {settings}",
            f"{self.warmup} warm-up runs per variant, then {self.rounds} rounds rotating the "
            f"order, {self.rows[0].runs if self.rows else 0} timed runs per variant",
        ]
        with_macs = any(r.macs is not None for r in self.rows)
        with_params = any(r.params is not None for r in self.rows)
        cols = ["variant", "p50 ms", "p90 ms", "mean ms", "load ms", "peak MB", "size MB", "p50 ratio"]
        cols += ["GMACs"] * with_macs + ["Mparams"] * with_params
        base = self.rows[0].p50_ms if self.rows else 0.0
        table = []
        for r in self.rows:
            cells = [
                r.name, f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.mean_ms:.3f}",
                f"{r.load_ms:.1f}", f"{r.peak_mem_bytes / 2**20:.1f}",
                f"{r.file_bytes / 2**20:.2f}", f"{r.p50_ms / base:.2f}" if base else "-",
            ]
            if with_macs:
                cells.append("-" if r.macs is None else f"{r.macs / 1e9:.3f}")
            if with_params:
                cells.append("-" if r.params is None else f"{r.params / 1e6:.3f}")
            table.append(cells)
        widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )

        return "\n".join([*head, line(cols), line(["-" * w for w in widths]), *map(line, table)])

    def plot(self, path: str | os.PathLike) -> None:
        """Write a PNG of p50 latency against MACs (needs MACs and matplotlib)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise BenchError(
                "BenchReport.plot needs matplotlib: pip install matplotlib "
                "(or pip install 'graphprune[plot]')"
            ) from exc
        rows = [r for r in self.rows if r.macs is not None]
        if not rows:
            raise BenchError(
                f"BenchReport.plot({os.fspath(path)}): no variant has MACs; "
                "pass macs={variant: macs} to benchmark()"
            )
        fig, ax = plt.subplots(figsize=(6, 4))
        try:
            ax.plot([r.macs / 1e9 for r in rows], [r.p50_ms for r in rows], "o")
            for r in rows:
                ax.annotate(r.name, (r.macs / 1e9, r.p50_ms), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
            ax.set_xlabel("GMACs")
            ax.set_ylabel("p50 latency (ms)")
            ax.set_title(f"{self.runtime.label} {self.runtime_version}, profile {self.profile.name} "
                         f"({self.profile.intra_op_threads} thread(s))")
            ax.set_xlim(left=0)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            fig.tight_layout()
            write_atomically(os.fspath(path), lambda f: fig.savefig(f, format="png", dpi=120))
        finally:
            plt.close(fig)


# ----------------------------------------------------------------------------- child process

#: The timing child's source, run with ``python -c`` (see child.py's docstring).
_CHILD = (Path(__file__).parent / "child.py").read_text()


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :data:`_CHILD` with ``spec``; BenchError naming the variant/file on any failure."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], input=json.dumps(spec), capture_output=True, text=True,
    )
    lines = proc.stdout.strip().splitlines()
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    if isinstance(result, dict) and "error" in result:
        name = result["variant"]
        raise BenchError(
            f"variant {name!r} ({spec['variants'][name]}): {result['error']}"
        )
    if proc.returncode != 0 or not isinstance(result, dict) or "ok" not in result:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise BenchError(
            f"benchmark child process failed (exit code {proc.returncode}) on "
            f"{', '.join(f'{n!r} ({p})' for n, p in spec['variants'].items())}: {tail}. "
            "Run the model once in onnxruntime.InferenceSession to see the full error"
        )
    return result["ok"]


# ----------------------------------------------------------------------------- helpers


def _check_onnx_file(name: str, path: str) -> None:
    """Fail early, with one clear message, on a missing or unparsable ONNX file."""
    if not os.path.exists(path):
        raise BenchError(
            f"variant {name!r}: file {path!r} does not exist; pass the path of an .onnx file "
            "(write one with graphprune.export.export_onnx)"
        )
    if not os.path.isfile(path):
        raise BenchError(f"variant {name!r}: {path!r} is not a file; pass the path of an .onnx file")
    import onnx

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise BenchError(
            f"variant {name!r}: {path!r} is not a valid ONNX model (cannot be parsed: "
            f"{type(exc).__name__}); the file is corrupted, truncated or not ONNX. "
            "Re-export it with graphprune.export.export_onnx"
        ) from exc
    if proto.ir_version == 0 or not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise BenchError(
            f"variant {name!r}: {path!r} is not a valid ONNX model (no IR version or empty "
            "graph); the file is corrupted, truncated or not ONNX. "
            "Re-export it with graphprune.export.export_onnx"
        )


def _check_file(name: str, path: str, runtime: Runtime) -> None:
    """Fail early on a missing file, or a file this runtime cannot read (by suffix; ONNX files are parsed)."""
    readable = {Runtime.ORT: (".onnx",), Runtime.OPENVINO: (".xml", ".onnx"), Runtime.EXECUTORCH: (".pte",)}[runtime]
    if runtime is Runtime.ORT or path.endswith(".onnx"):
        _check_onnx_file(name, path)
    elif not os.path.isfile(path):
        raise BenchError(f"variant {name!r}: file {path!r} does not exist; pass the path of a "
                         f"{' or '.join(readable)} file (graphprune.runtimes.build_artifacts writes them)")
    if not path.endswith(readable):
        raise BenchError(f"variant {name!r}: {runtime.label} reads {' or '.join(readable)} files, not {path!r}; "
                         "write one with graphprune.runtimes.build_artifacts")
    if path.endswith(".xml") and not os.path.isfile(path[:-4] + ".bin"):
        raise BenchError(f"variant {name!r}: OpenVINO IR {path!r} has no weights file {path[:-4] + '.bin'!r} beside it")


#: /proc/cpuinfo flags that decide which kernels a runtime uses, and how they are named in cpu_name()
_ISA_FLAGS = (("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"), ("amx_tile", "AMX"), ("avx2", "AVX2"))


def cpu_name() -> str:
    """The CPU's model name with the vector extensions runtimes pick kernels by (from /proc/cpuinfo), else
    what platform knows. Cloud CPUs often report a generic model name ("Intel(R) Xeon(R) Processor"); the
    extensions (AVX-512, VNNI, AMX) tell such machines apart, in tables and in profile cache keys. (Not
    the clock: it varies from reading to reading on many machines, and cache keys must not.)"""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            info = {}
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = info.get("model name", platform.machine())
    flags = set(info.get("flags", "").split())
    isa = [label for flag, label in _ISA_FLAGS if flag in flags]
    if "AVX-512" in isa and "AVX2" in isa:
        isa.remove("AVX2")  # implied
    return f"{name} ({', '.join(isa)})" if isa else name


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of already sorted values."""
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _pick_core() -> int | None:
    """The highest-numbered core this process may use (core 0 tends to take interrupts)."""
    if not hasattr(os, "sched_getaffinity") or not hasattr(os, "sched_setaffinity"):
        return None
    return max(os.sched_getaffinity(0))


def session_options(profile: Profile):
    """ONNX Runtime session options of the protocol (for in-process timing, e.g. latency tables)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = profile.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, profile.graph_optimization_level)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


@contextlib.contextmanager
def pinned(profile: Profile):
    """Pin the calling thread's process to one core for a pinned profile, restoring the affinity afterwards."""
    core = _pick_core() if profile.pin_core else None
    if core is None:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def _checked_variants(variants, profile, warmup, repeats, rounds, runtime, macs, params) -> dict[str, str]:
    """benchmark()'s arguments checked (BenchError saying what to fix), before any child starts: {name: path}."""
    if not isinstance(profile, Profile):
        raise BenchError(f"profile must be a graphprune.timing.Profile (e.g. CPU, EDGE), got {profile!r}")
    if not variants:
        raise BenchError("benchmark() needs at least one variant: {name: path to .onnx}")
    if not (isinstance(warmup, int) and warmup >= 0):
        raise BenchError(f"warmup must be an int >= 0, got {warmup!r}")
    if not (isinstance(rounds, int) and rounds >= 1 and isinstance(repeats, int) and repeats >= rounds):
        raise BenchError(
            f"need ints with repeats >= rounds >= 1, got repeats={repeats!r}, rounds={rounds!r}"
        )
    if not isinstance(runtime, Runtime):
        raise BenchError(f"runtime must be a graphprune.runtimes.Runtime (e.g. Runtime.ORT), got {runtime!r}; "
                         "graphprune.runtimes.parse_runtimes('ort,openvino') parses names")
    paths = {str(n): os.fspath(p) for n, p in variants.items()}
    for extra, label in ((macs, "macs"), (params, "params")):
        unknown = sorted(set(extra or {}) - set(paths))
        if unknown:
            raise BenchError(f"{label} names unknown variants {unknown}; variants are {sorted(paths)}")
    for name, path in paths.items():
        _check_file(name, path, runtime)
    runtime.version()  # MissingRuntimeError naming the extra, before any child starts
    return paths


# ----------------------------------------------------------------------------- public API


def benchmark(
    variants: Mapping[str, str | os.PathLike],
    profile: Profile = EDGE,
    *,
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 5,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    macs: Mapping[str, int] | None = None,
    params: Mapping[str, int] | None = None,
    runtime: Runtime = Runtime.ORT,
) -> BenchReport:
    """Benchmark model files ``{variant name: path}`` in ``runtime`` (ONNX Runtime by default) under ``profile``.

    ``repeats`` is the number of timed runs per variant, split over ``rounds`` interleaved
    rounds (rounded up to a multiple of ``rounds``). ``input_shapes`` maps an input name
    to a concrete shape, for inputs with dynamic dims. ``macs`` / ``params`` map variant
    names to counts carried into the report. The protocol is in the module docstring.
    Raises BenchError on a missing, corrupted or unrunnable model.
    """
    paths = _checked_variants(variants, profile, warmup, repeats, rounds, runtime, macs, params)

    core = _pick_core() if profile.pin_core else None
    base_spec = {
        "core": core, "threads": profile.intra_op_threads, "runtime": runtime.value,
        "level": profile.graph_optimization_level,
        "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
    }
    per_round = math.ceil(repeats / rounds)
    timing = _run_child({
        **base_spec, "mode": "timing", "variants": paths, "warmup": warmup,
        "rounds": rounds, "per_round": per_round,
    })
    rows = []
    for name, path in paths.items():
        memory = _run_child({**base_spec, "mode": "memory", "variants": {name: path}})
        lat = [ns / 1e6 for ns in timing["latency_ns"][name]]
        ordered = sorted(lat)
        rows.append(BenchRow(
            name=name, path=path, p50_ms=_percentile(ordered, 0.5),
            p90_ms=_percentile(ordered, 0.9), mean_ms=statistics.fmean(lat),
            load_ms=memory["load_ns"] / 1e6,
            peak_mem_bytes=int(memory["peak_mem_bytes"]), file_bytes=artifact_bytes(path),
            runs=len(lat), macs=(macs or {}).get(name), params=(params or {}).get(name),
            latencies_ms=tuple(lat),
        ))
    return BenchReport(
        profile=profile, rows=tuple(rows), warmup=warmup, repeats=repeats, rounds=rounds,
        pinned_core=core, onnxruntime_version=timing["version"] if runtime is Runtime.ORT else "",
        runtime=runtime, runtime_version=timing["version"], cpu=cpu_name(),
    )
