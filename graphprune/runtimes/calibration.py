"""Channel steps measured, not assumed: micro-benchmark one layer of each kind across channel counts.

For each layer kind (representative shapes, batch 1):

* dense conv: ``Conv2d(c, c, 3, padding=1)`` on 14x14 (a ResNet-50 stage-3 3x3 conv);
* depthwise conv: ``Conv2d(c, c, 3, padding=1, groups=c)`` on 28x28;
* linear: ``Linear(c, c)`` on 196 rows (ViT-B/16's tokens);

the latency ``t(c)`` is measured for every ``c`` in a grid whose ends are multiples of the largest
candidate step, the whole grid of one kind timed together in rotating rounds
(:meth:`~graphprune.runtimes.layers.LayerTimer.time_layers`), in three independent passes whose
median is kept. A step ``s`` is judged by the mean throughput ``c / t(c)`` over the grid's multiples
of ``s``; the chosen step is the SMALLEST candidate whose throughput is within ``tolerance`` of the
best candidate's (no alignment = 1: any count is as fast per channel). The penalty off the step is
the median over the other counts of ``t(c) / t_lin(c)``, where ``t_lin`` interpolates linearly
between the neighbouring multiples of the step (1.0 = no penalty).

Narrow layers (``one_block``): a layer asked to keep fewer output channels than one step is kept
at one step when that costs (almost) nothing. This is measured too: ``Conv2d(2*step, c, 3)`` on 14x14
at ``c = step // 2`` and ``c = step``; when half a step takes at least ``1 - NARROW_TOLERANCE`` of a
full step's time, the narrow layer runs off the fast path and one block is kept
(:func:`graphprune.runtimes.profiles.keeps_one_block`).

:func:`calibrate` writes the profile atomically to the cache that :mod:`graphprune.runtimes.profiles`
reads (``$GRAPHPRUNE_CACHE``, default ``~/.cache/graphprune``; keyed by CPU, runtime and its version,
precision and thread count) and returns its Target.
"""
from __future__ import annotations

import os
import statistics
from typing import Mapping, Sequence

from ..atomic import write_json
from ..errors import InputError
from ..rules import LayerKind
from ..targets import Target
from ..timing.harness import cpu_name
from .kinds import Precision, Runtime, parse_precisions, parse_runtimes
from .layers import ConvLayer, LayerTimer, LinearLayer
from .profiles import MeasuredProfile, load_profile, profile_path, target_of

__all__ = ["CANDIDATE_STEPS", "default_counts", "derive_step", "measure_profile", "calibrate"]

CANDIDATE_STEPS = (1, 2, 4, 8, 16, 32)


def default_counts(runtime: Runtime) -> tuple[int, ...]:
    """The channel grid: 32..96 for ORT/OpenVINO (39 counts); 48..80 for ExecuTorch, whose lowering is slow (8)."""
    if runtime is Runtime.EXECUTORCH:
        return (48, 56, 60, 63, 64, 68, 72, 80)
    return tuple(sorted(set(range(32, 97, 2)) | {35, 45, 57, 63, 65, 71, 83, 95}))


def _interp(c: int, on: Sequence[int], t: Mapping[int, float]) -> float | None:
    below = [k for k in on if k < c]
    above = [k for k in on if k > c]
    if not below or not above:
        return None
    lo, hi = below[-1], above[0]
    return t[lo] + (t[hi] - t[lo]) * (c - lo) / (hi - lo)


def derive_step(latency_ms: Mapping[int, float], tolerance: float = 0.03,
                candidates: Sequence[int] = CANDIDATE_STEPS) -> tuple[int, float]:
    """(step, penalty off the step) from ``{channel count: ms}`` (see the module docstring)."""
    counts = sorted(latency_ms)
    throughput = {}
    for s in candidates:
        on = [c for c in counts if c % s == 0]
        if len(on) >= 2:
            throughput[s] = statistics.fmean(c / latency_ms[c] for c in on)
    if not throughput:
        raise InputError(f"channel counts {counts} hold fewer than two multiples of every candidate step "
                         f"{tuple(candidates)}; give a grid such as 32..96")
    best = max(throughput.values())
    step = min(s for s, v in throughput.items() if v >= (1 - tolerance) * best)
    on = [c for c in counts if c % step == 0]
    ratios = [latency_ms[c] / ref for c in counts if c % step and (ref := _interp(c, on, latency_ms))]
    return step, (statistics.median(ratios) if ratios else 1.0)


def _narrow_conv(timer: LayerTimer, step: int) -> dict[int, float]:
    """Dense 3x3 conv latency at half a step and one step of output channels (2*step inputs, 14x14)."""
    if step < 2:
        return {}
    return timer.time_layers({c: ConvLayer(1, 2 * step, c, 14, 14, (3, 3), pad=(1, 1)) for c in (step // 2, step)})


def _grid(kind: LayerKind, counts: Sequence[int]) -> dict[int, ConvLayer | LinearLayer]:
    """The representative layer of `kind` at every channel count (see the module docstring)."""
    if kind is LayerKind.DENSE_CONV:
        return {c: ConvLayer(1, c, c, 14, 14, (3, 3), pad=(1, 1)) for c in counts}
    if kind is LayerKind.GROUPED_CONV:
        return {c: ConvLayer(1, c, c, 28, 28, (3, 3), pad=(1, 1), groups=c) for c in counts}
    return {c: LinearLayer(196, c, c) for c in counts}


def _median_of_passes(passes: Sequence[Mapping[int, float]]) -> dict[int, float]:
    """{count: median over the passes of that count's latency}."""
    return {c: statistics.median(p[c] for p in passes) for c in passes[0]}


def measure_profile(runtime: Runtime, precision: Precision, *, counts: Sequence[int], threads: int = 1,
                    runs: int = 15, passes: int = 3, tolerance: float = 0.03,
                    path: str | None = None) -> MeasuredProfile:
    """Time every layer kind at every count in ``passes`` passes, derive the steps, write the profile atomically.

    Each pass builds and times every kind's grid afresh, and a count's latency is the median over
    the passes: a slow spell that outlasts one grid's rotating rounds (seen here: a whole OpenVINO
    grid 3-64% slower, unevenly) spoils one pass, not the profile.
    """
    timer = LayerTimer(runtime, precision, threads=threads, pin_core=True, runs=runs)
    kinds = (LayerKind.DENSE_CONV, LayerKind.GROUPED_CONV, LayerKind.LINEAR)
    timed = [{kind: timer.time_layers(_grid(kind, counts)) for kind in kinds} for _ in range(passes)]
    latency = {kind: _median_of_passes([t[kind] for t in timed]) for kind in kinds}
    derived = {kind: derive_step(t, tolerance) for kind, t in latency.items()}
    step = derived[LayerKind.DENSE_CONV][0]
    narrow = _median_of_passes([_narrow_conv(timer, step) for _ in range(passes)])  # {} when the step is 1
    profile = MeasuredProfile(runtime, precision, timer.version, cpu_name(), threads, latency,
                              {k: s for k, (s, _) in derived.items()}, {k: p for k, (_, p) in derived.items()},
                              narrow, path or profile_path(runtime, precision, threads))
    os.makedirs(os.path.dirname(os.path.abspath(profile.path)), exist_ok=True)
    write_json(profile.path, profile.to_json())
    return profile


def calibrate(runtime="ort", precision="fp32", *, threads: int = 1, counts=None, runs: int = 15, passes: int = 3,
              tolerance: float = 0.03, refresh: bool = False, path: str | None = None) -> Target:
    """The measured Target of `runtime` ("ort", "openvino", "executorch" or a Runtime) at `precision`.

    Reads the cached profile of this CPU, runtime version, precision and thread count when it holds
    the same channel `counts` (default: default_counts); otherwise (or with `refresh=True`) measures
    it in `passes` passes (median per layer), which took 2-85 s for ORT/OpenVINO and 3-7 min for
    ExecuTorch (one XNNPACK lowering per layer and pass) on a 2-core Xeon, and writes it atomically
    to `path` (default: the cache, see graphprune.runtimes.profiles).
    """
    runtimes, precisions = parse_runtimes(runtime), parse_precisions(precision)
    if len(runtimes) != 1 or len(precisions) != 1:
        raise InputError(f"calibrate takes one runtime and one precision, got {runtime!r}, {precision!r}")
    (rt,), (pr,) = runtimes, precisions
    for name, value in (("threads", threads), ("runs", runs), ("passes", passes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an int >= 1, got {value!r}")
    counts = tuple(default_counts(rt) if counts is None else counts)
    if len(counts) < 2 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
        raise InputError(f"counts must be two or more positive ints (channel counts), got {counts!r}")
    path = path or profile_path(rt, pr, threads)
    cached = None if refresh else load_profile(path)
    if cached is None or sorted(cached.latency_ms[LayerKind.DENSE_CONV]) != sorted(counts):
        cached = measure_profile(rt, pr, counts=counts, threads=threads, runs=runs, passes=passes,
                                 tolerance=tolerance, path=path)
    return target_of(cached)
