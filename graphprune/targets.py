"""Deployment targets: how many channels a runtime wants per layer kind.

ONNX Runtime's x86 CPU convolutions use the blocked NCHWc layout only when channel counts
are multiples of its block: 16 floats with AVX-512, 8 with AVX2 (and input channels a
multiple of 4, which the block implies). XNNPACK and ARM kernels need no alignment.
A target gives a channel step per layer kind; the planner then keeps, for every layer of a
group, a number of channels that is a multiple of that layer's step (converted from
positions to group channels). A target with `one_block=True` also keeps a layer that
pruning would leave narrower than one block at one block (such a layer leaves the NCHWc
path and costs layout reorders on both sides); it is off by default because it can keep
more channels than asked.

Steps can be measured instead of assumed: :func:`calibrate` micro-benchmarks conv, depthwise conv
and linear layers across channel counts in a runtime at a precision on this machine (see
:mod:`graphprune.runtimes.calibration`), caches the profile on disk and returns a Target named
after it (``measured:ort/fp32/1t``), which the report names. ``target="auto"`` uses the cached
ONNX Runtime fp32 one-thread profile when there is one, else the hand-written ``ort-x86`` rule.
"""
from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

import numpy as np

from .errors import InputError
from .groups import ChannelGroup, Role
from .rules import LayerKind

__all__ = ["LayerKind", "Target", "resolve_target", "ort_x86", "x86_block", "NONE", "XNNPACK", "calibrate",
           "cached_target"]


@dataclass(frozen=True)
class Target:
    """Channel-count steps of one runtime, per layer kind (1 = any count is fine)."""

    name: str
    dense_conv: int = 1
    grouped_conv: int = 1
    linear: int = 1
    one_block: bool = False  # keep a layer that would fall below one block at one block (off the fast path otherwise)

    def step(self, kind: LayerKind) -> int:
        return {LayerKind.DENSE_CONV: self.dense_conv, LayerKind.GROUPED_CONV: self.grouped_conv,
                LayerKind.LINEAR: self.linear}[kind]

    @classmethod
    def uniform(cls, step: int) -> "Target":
        """One channel step for every layer kind (`round_to=step`)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise InputError(f"round_to must be a positive integer or None (the target decides), got {step!r}")
        return cls(f"round_to={step}", step, step, step)

    def constraints(self, group: ChannelGroup, layers: Mapping[str, LayerKind]) -> tuple[tuple[np.ndarray, int], ...]:
        """(channels, step) per member layer: the count of `channels` kept must be a multiple of `step`.

        `layers` maps the weight parameters of conv/linear-like layers to their kind (Analysis.layers).

        A layer sees the group channels in its slot; each channel may cover w positions
        (flatten, merged heads or shuffled pairs), so its step is block / gcd(block, w).
        Layers that see only part of a group (the convs that each add 32 channels to a
        DenseNet block) get their own constraint, so each of them lands on the block.
        """
        out = {}
        for slot, (channels, counts) in group.member_channels.items():
            if slot.role not in (Role.PRODUCER, Role.CONSUMER):
                continue
            kind = layers.get(slot.name)
            if kind is None or self.step(kind) == 1:
                continue
            if not (counts == counts[0]).all():
                continue
            block = self.step(kind)
            step = block // math.gcd(block, int(counts[0]))
            if step > 1:
                key = channels.tobytes()
                out[key] = (channels, max(step, out.get(key, (None, 1))[1]))
        return tuple(out.values())


@lru_cache(maxsize=1)
def x86_block() -> int:
    """16 with AVX-512, 8 with AVX2, else 1 (read from /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return 8
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 1


def ort_x86() -> Target:
    """ONNX Runtime on this x86 CPU; the name says which vector width chose the block (ort-x86/avx512, /avx2)."""
    block = x86_block()
    isa = {16: "avx512", 8: "avx2"}.get(block, "scalar")
    return Target(f"ort-x86/{isa}", dense_conv=block, grouped_conv=block, linear=min(block, 8), one_block=block > 1)


NONE = Target("none")
XNNPACK = Target("xnnpack")

def _from_profile(profile) -> Target:
    """The measured steps; narrow layers keep one block only where the profile measured that half a block
    is not faster (MeasuredProfile.one_block)."""
    steps = profile.steps
    return Target(profile.name, dense_conv=steps[LayerKind.DENSE_CONV], grouped_conv=steps[LayerKind.GROUPED_CONV],
                  linear=steps[LayerKind.LINEAR], one_block=profile.one_block)


def calibrate(runtime="ort", precision="fp32", *, threads: int = 1, counts=None, runs: int = 15, passes: int = 3,
              tolerance: float = 0.03, refresh: bool = False, path: str | None = None) -> Target:
    """The measured Target of `runtime` ("ort", "openvino", "executorch" or a Runtime) at `precision`.

    Reads the cached profile of this CPU, runtime version, precision and thread count when it holds
    the same channel `counts` (default: graphprune.runtimes.calibration.default_counts); otherwise
    (or with `refresh=True`) measures it in `passes` passes (median per layer), which took 2-85 s for
    ORT/OpenVINO and 3-7 min for ExecuTorch (one XNNPACK lowering per layer and pass) on a 2-core Xeon,
    and writes it atomically to `path` (default: the cache).
    """
    from .runtimes import calibration as cal
    from .runtimes.kinds import parse_precisions, parse_runtimes

    runtimes, precisions = parse_runtimes(runtime), parse_precisions(precision)
    if len(runtimes) != 1 or len(precisions) != 1:
        raise InputError(f"calibrate takes one runtime and one precision, got {runtime!r}, {precision!r}")
    (rt,), (pr,) = runtimes, precisions
    for name, value in (("threads", threads), ("runs", runs), ("passes", passes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an int >= 1, got {value!r}")
    counts = tuple(cal.default_counts(rt) if counts is None else counts)
    if len(counts) < 2 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
        raise InputError(f"counts must be two or more positive ints (channel counts), got {counts!r}")
    path = path or cal.profile_path(rt, pr, threads)
    cached = None if refresh else cal.load_profile(path)
    if cached is None or sorted(cached.latency_ms[LayerKind.DENSE_CONV]) != sorted(counts):
        cached = cal.measure_profile(rt, pr, counts=counts, threads=threads, runs=runs, passes=passes,
                                     tolerance=tolerance, path=path)
    return _from_profile(cached)


def cached_target(runtime="ort", precision="fp32", threads: int = 1) -> Target | None:
    """The measured Target from the cache, or None when this machine has no profile for it (nothing is measured)."""
    from .runtimes import calibration as cal
    from .runtimes.kinds import parse_precisions, parse_runtimes

    (rt,), (pr,) = parse_runtimes(runtime), parse_precisions(precision)
    if not rt.installed():
        return None
    profile = cal.load_profile(cal.profile_path(rt, pr, threads))
    return None if profile is None else _from_profile(profile)


def _auto(machine: str) -> Target:
    """The cached ORT fp32 1-thread profile, else the hand-written rule of this machine."""
    return cached_target() or (ort_x86() if machine in ("x86_64", "amd64", "i686") else XNNPACK)


def resolve_target(target: str | Target, round_to: int | None = None) -> Target:
    """A Target from a name: "auto" (the measured ORT profile if cached, else ort-x86 on x86-64, else xnnpack),
    "ort-x86", "xnnpack", "arm", "none";
    an explicit `round_to` step overrides it."""
    if round_to is not None:
        return Target.uniform(round_to)
    if isinstance(target, Target):
        return target
    machine = platform.machine().lower()
    names = {"ort-x86": ort_x86, "xnnpack": lambda: XNNPACK, "arm": lambda: Target("arm"), "none": lambda: NONE,
             "auto": lambda: _auto(machine)}
    if target not in names:
        raise InputError(f"unknown target {target!r}; use one of {sorted(names)} or a graphprune.targets.Target")
    return names[target]()
