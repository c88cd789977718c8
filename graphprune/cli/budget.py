"""How much prune removes, from the shell: exactly one of --ratio R, --target-params N, --target-macs N,
--target-latency-ms MS [RUNTIME].

Counts take a k/M/G suffix (powers of 1000: 1.5M = 1,500,000). --target-params and --target-macs prune until the
measured count is at most N (prune_graph's target_params / target_macs); --target-latency-ms prunes until the
latency measured in RUNTIME (ort by default; openvino, executorch with the edge extra) at fp32 under the edge
profile is about MS (latency.prune_to_latency: a per-layer latency table, then measured and corrected).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..runtimes.kinds import Runtime, parse_runtimes
from .messages import CLIError

SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
FLAGS = "--ratio R, --target-params N, --target-macs N or --target-latency-ms MS [RUNTIME]"


def parse_count(text: str, flag: str) -> int:
    """"1.5M" -> 1500000; a positive count with an optional k/M/G suffix."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*", text)
    value = int(float(match.group(1)) * SUFFIXES[match.group(2).lower()]) if match else 0
    if value < 1:
        raise CLIError(f"{flag} {text!r} is not a positive count; give e.g. 1500000 or 1.5M (k, M, G suffixes)")
    return value


@dataclass(frozen=True)
class CLIBudget:
    """One budget; exactly one field is set."""

    ratio: float | None = None
    params: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    runtime: Runtime = Runtime.ORT

    def describe(self) -> str:
        if self.ratio is not None:
            return f"at ratio {self.ratio}"
        if self.params is not None:
            return f"to at most {self.params:,} params"
        if self.macs is not None:
            return f"to at most {self.macs:,} MACs"
        return f"to about {self.latency_ms} ms in {self.runtime.label}"

    def keywords(self) -> dict:
        """prune_graph's budget keywords (not for a latency budget)."""
        return {"ratio": self.ratio, "target_params": self.params, "target_macs": self.macs}

    def to_json(self) -> dict:
        out = {k: v for k, v in (("ratio", self.ratio), ("target_params", self.params), ("target_macs", self.macs),
                                 ("target_latency_ms", self.latency_ms)) if v is not None}
        if self.latency_ms is not None:
            out["latency_runtime"] = self.runtime.value
        return out


def _latency(values: list[str]) -> tuple[float, Runtime]:
    if len(values) > 2:
        raise CLIError(f"--target-latency-ms takes MS and an optional RUNTIME, got {' '.join(values)!r}; "
                       "e.g. --target-latency-ms 2.5 ort")
    try:
        ms = float(values[0])
    except ValueError:
        ms = 0.0
    if not ms > 0:
        raise CLIError(f"--target-latency-ms {values[0]!r} is not a positive number of milliseconds, e.g. 2.5")
    runtimes = parse_runtimes(values[1]) if len(values) == 2 else [Runtime.ORT]
    if len(runtimes) != 1:
        raise CLIError(f"--target-latency-ms names one runtime (ort, openvino, executorch), got {values[1]!r}")
    return ms, runtimes[0]


def read_budget(args) -> CLIBudget:
    """The budget the flags give; a CLIError unless exactly one is given."""
    given = [flag for flag, v in (("--ratio", args.ratio), ("--target-params", args.target_params),
                                  ("--target-macs", args.target_macs), ("--target-latency-ms", args.target_latency_ms))
             if v is not None]
    if len(given) != 1:
        raise CLIError(f"give exactly one budget: {FLAGS}; got {', '.join(given) if given else 'none'}")
    if args.ratio is not None:
        return CLIBudget(ratio=args.ratio)
    if args.target_params is not None:
        return CLIBudget(params=parse_count(args.target_params, "--target-params"))
    if args.target_macs is not None:
        return CLIBudget(macs=parse_count(args.target_macs, "--target-macs"))
    ms, runtime = _latency(args.target_latency_ms)
    runtime.version()  # a missing runtime is one line before any work
    return CLIBudget(latency_ms=ms, runtime=runtime)
