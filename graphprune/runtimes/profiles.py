"""Measured channel-step profiles on disk, and the one place where ``target="auto"`` becomes a Target.

A profile (measured by :mod:`graphprune.runtimes.calibration`) is cached as JSON under
:func:`cache_root`, keyed by CPU, runtime and its version, precision and thread count.
``"auto"`` is the cached ONNX Runtime fp32 one-thread profile of this machine when there is one,
else the hand-written rule of this machine (:func:`graphprune.targets.machine_rule`). Reading
that cache is what makes "auto" depend on the machine, so :func:`resolve_target` runs once,
where a run starts (prune_graph and the other conveniences, Options.from_keywords, the CLI);
planning itself only sees the resulting Target, whose name the report carries.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Mapping

from ..errors import InputError
from ..rules import LayerKind
from ..targets import HAND_WRITTEN, Target, machine_rule
from ..timing.harness import cpu_name
from .kinds import Precision, Runtime, parse_precisions, parse_runtimes

__all__ = ["cache_root", "MeasuredProfile", "NARROW_TOLERANCE", "keeps_one_block", "profile_path", "load_profile",
           "target_of", "cached_target", "resolve_target"]


def cache_root() -> str:
    """Where measured tables and profiles live: $GRAPHPRUNE_CACHE, else ~/.cache/graphprune."""
    return os.environ.get("GRAPHPRUNE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "graphprune"))


#: half a step taking at least (1 - this) of a full step's time keeps narrow layers at one step
NARROW_TOLERANCE = 0.10


def keeps_one_block(narrow_ms: Mapping[int, float]) -> bool:
    """From ``{step // 2: ms, step: ms}`` (empty when the step is 1): is a narrow layer as slow as a full block?"""
    if len(narrow_ms) != 2:
        return False
    half, full = sorted(narrow_ms)
    return narrow_ms[half] >= (1 - NARROW_TOLERANCE) * narrow_ms[full]


@dataclass(frozen=True)
class MeasuredProfile:
    """Measured layer latencies of one runtime at one precision on this machine, and the steps derived from them."""

    runtime: Runtime
    precision: Precision
    runtime_version: str
    cpu: str
    threads: int
    latency_ms: Mapping[LayerKind, Mapping[int, float]]
    steps: Mapping[LayerKind, int]
    penalties: Mapping[LayerKind, float]
    narrow_ms: Mapping[int, float]  # dense conv at half a step and one step of outputs (see keeps_one_block)
    path: str = ""

    @property
    def one_block(self) -> bool:
        return keeps_one_block(self.narrow_ms)

    @property
    def name(self) -> str:
        return f"measured:{self.runtime.value}/{self.precision.value}/{self.threads}t"

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("path")
        d["runtime"], d["precision"] = self.runtime.value, self.precision.value
        for key in ("latency_ms", "steps", "penalties"):
            d[key] = {k.name: v for k, v in getattr(self, key).items()}
        return d

    @classmethod
    def from_json(cls, data: Mapping, path: str = "") -> "MeasuredProfile":
        kinds = {k.name: k for k in LayerKind}
        return cls(
            runtime=Runtime(data["runtime"]), precision=Precision(data["precision"]),
            runtime_version=data["runtime_version"], cpu=data["cpu"], threads=int(data["threads"]),
            latency_ms={kinds[k]: {int(c): float(ms) for c, ms in v.items()} for k, v in data["latency_ms"].items()},
            steps={kinds[k]: int(v) for k, v in data["steps"].items()},
            penalties={kinds[k]: float(v) for k, v in data["penalties"].items()},
            narrow_ms={int(c): float(ms) for c, ms in data["narrow_ms"].items()}, path=path)

    def describe(self) -> str:
        parts = [f"{k.name.lower()} step {self.steps[k]} (penalty off the step x{self.penalties[k]:.2f})"
                 for k in self.steps]
        narrow = ", ".join(f"{c} outputs {ms:.3f} ms" for c, ms in sorted(self.narrow_ms.items()))
        return (f"{self.name}: {self.runtime.label} {self.runtime_version}, {self.precision.value}, "
                f"{self.threads} thread(s), {self.cpu}: " + "; ".join(parts)
                + (f"; narrow dense conv {narrow}: one block {'kept' if self.one_block else 'not kept'}" if narrow else ""))


def profile_path(runtime: Runtime, precision: Precision, threads: int) -> str:
    """The cache file of (CPU, runtime version, precision, threads)."""
    key = f"{cpu_name()}|{runtime.value} {runtime.version()}|{precision.value}|threads {threads}"
    return os.path.join(cache_root(), f"target-{runtime.value}-{precision.value}-"
                                      f"{hashlib.sha1(key.encode()).hexdigest()[:12]}.json")


def load_profile(path: str) -> MeasuredProfile | None:
    """The profile cached at ``path``; None if there is none (or it is unreadable: it is then re-measured)."""
    try:
        with open(path) as f:
            return MeasuredProfile.from_json(json.load(f), path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def target_of(profile: MeasuredProfile) -> Target:
    """The measured steps; narrow layers keep one block only where the profile measured that half a block
    is not faster (MeasuredProfile.one_block)."""
    steps = profile.steps
    return Target(profile.name, dense_conv=steps[LayerKind.DENSE_CONV], grouped_conv=steps[LayerKind.GROUPED_CONV],
                  linear=steps[LayerKind.LINEAR], one_block=profile.one_block)


def cached_target(runtime="ort", precision="fp32", threads: int = 1) -> Target | None:
    """The measured Target from the cache, or None when this machine has no profile for it (nothing is measured)."""
    (rt,), (pr,) = parse_runtimes(runtime), parse_precisions(precision)
    if not rt.installed():
        return None
    profile = load_profile(profile_path(rt, pr, threads))
    return None if profile is None else target_of(profile)


def resolve_target(target: str | Target, round_to: int | None = None) -> Target:
    """A Target from what a caller wrote: an explicit `round_to` step overrides everything; a Target is kept;
    "auto" is the measured ORT profile if cached, else machine_rule() (ort-x86 on x86-64, else xnnpack);
    "ort-x86", "xnnpack", "arm", "none" are the hand-written rules (graphprune.targets)."""
    if round_to is not None:
        return Target.uniform(round_to)
    if isinstance(target, Target):
        return target
    if target == "auto":
        return cached_target() or machine_rule()
    if target not in HAND_WRITTEN:
        names = sorted([*HAND_WRITTEN, "auto"])
        raise InputError(f"unknown target {target!r}; use one of {names} or a graphprune.targets.Target")
    return HAND_WRITTEN[target]()
