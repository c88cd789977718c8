"""The per-layer latency table of latency-aware planning: layer shape -> median ms in one runtime at one precision.

Each entry is one layer timed alone by :class:`graphprune.runtimes.layers.LayerTimer` under the timing
profile's threads and pinning, measured on first use and kept in a JSON file under
:func:`graphprune.runtimes.profiles.cache_root`, keyed by CPU, runtime and its version, precision and
threads; `save()` writes it atomically. :mod:`graphprune.latency` predicts model latency from it.
"""
from __future__ import annotations

import hashlib
import json
import os

from .. import timing
from ..atomic import write_json
from .kinds import Precision, Runtime
from .layers import LayerTimer
from .profiles import cache_root

__all__ = ["LatencyTable", "default_cache_path"]


def default_cache_path(profile: timing.Profile, runtime: Runtime = Runtime.ORT,
                       precision: Precision = Precision.FP32) -> str:
    """The table file of this CPU, runtime version, precision and thread count (ORT: also its optimisation level)."""
    key = f"{timing.cpu_name()}|{runtime.value} {runtime.version()}|threads {profile.intra_op_threads}"
    key += f"|{profile.graph_optimization_level}" if runtime is Runtime.ORT else ""
    key += f"|{precision.value}" if precision is not Precision.FP32 else ""
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return os.path.join(cache_root(), f"latency-{digest}.json")


class LatencyTable:
    """Layer-shape -> median milliseconds in one runtime and precision, measured on first use and saved
    (atomically) on `save()`."""

    def __init__(self, profile: timing.Profile = timing.EDGE, path: str | None = None, runs: int = 15, *,
                 runtime: Runtime = Runtime.ORT, precision: Precision = Precision.FP32):
        self.profile, self.runs, self.runtime, self.precision = profile, runs, runtime, precision
        self.path = path or default_cache_path(profile, runtime, precision)
        self.entries: dict[str, float] = {}
        self.timer = LayerTimer(runtime, precision, threads=profile.intra_op_threads, pin_core=profile.pin_core,
                                runs=runs)
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.entries = json.load(f).get("entries", {})

    @property
    def measured(self) -> int:
        """Layers timed by this table (not read from the cache file)."""
        return self.timer.measured

    def overhead_ms(self) -> float:
        """The runtime's per-call cost: the latency of a 1x1 linear layer (measured once, kept with the entries)."""
        if "overhead" not in self.entries:
            self.entries["overhead"] = self.timer.linear_ms(1, 1, 1)
        return self.entries["overhead"]

    def conv_ms(self, n, cin, cout, h, w, k, stride, pad, groups, dilation=(1, 1)) -> float:
        """The conv's latency minus the per-call overhead (entries keep the measured latency)."""
        key = f"conv n{n} c{cin}>{cout} {h}x{w} k{k} s{stride} p{pad} g{groups} d{dilation}"
        if key not in self.entries:
            self.entries[key] = self.timer.conv_ms(n, cin, cout, h, w, k, stride, pad, groups, dilation)
        return max(self.entries[key] - self.overhead_ms(), 0.0)

    def linear_ms(self, rows, fin, fout) -> float:
        """The layer's latency minus the per-call overhead (entries keep the measured latency)."""
        key = f"linear r{rows} {fin}>{fout}"
        if key not in self.entries:
            self.entries[key] = self.timer.linear_ms(rows, fin, fout)
        return max(self.entries[key] - self.overhead_ms(), 0.0)

    def save(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        write_json(self.path, {"cpu": timing.cpu_name(), "runtime": self.runtime.value,
                                "runtime_version": self.timer.version, "precision": self.precision.value,
                                "threads": self.profile.intra_op_threads, "entries": self.entries})
