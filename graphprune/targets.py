"""Deployment targets: how many channels a runtime wants per layer kind. Plain data, no I/O but the CPU's flags.

ONNX Runtime's x86 CPU convolutions use the blocked NCHWc layout only when channel counts
are multiples of its block: 16 floats with AVX-512, 8 with AVX2 (and input channels a
multiple of 4, which the block implies). XNNPACK and ARM kernels need no alignment.
A target gives a channel step per layer kind; the planner then keeps, for every layer of a
group, a number of channels that is a multiple of that layer's step (converted from
positions to group channels). A target with `one_block=True` also keeps a layer that
pruning would leave narrower than one block at one block (such a layer leaves the NCHWc
path and costs layout reorders on both sides); it is off by default because it can keep
more channels than asked.

Steps can be measured instead of assumed: :func:`graphprune.runtimes.calibration.calibrate`
micro-benchmarks conv, depthwise conv and linear layers across channel counts in a runtime at a
precision on this machine, caches the profile on disk and returns a Target named after it
(``measured:ort/fp32/1t``), which the report names. ``target="auto"`` is resolved from that cache
by :func:`graphprune.runtimes.profiles.resolve_target`, once, where a run starts; nothing here reads it.
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
from .rules import LayerKind, WeightedLayer
from .rules.conv import GroupedConv

__all__ = ["LayerKind", "Target", "ort_x86", "x86_block", "machine_rule", "HAND_WRITTEN", "NONE", "XNNPACK"]


@dataclass(frozen=True)
class Target:
    """Channel-count steps of one runtime, per layer kind (1 = any count is fine)."""

    name: str
    dense_conv: int = 1
    grouped_conv: int = 1
    linear: int = 1
    one_block: bool = False  # keep a layer that would fall below one block at one block (off the fast path otherwise)
    per_group_steps: bool = True  # grouped convs: the step is on each group's width (a runtime's kernel), not the layer's

    def step(self, kind: LayerKind) -> int:
        return {LayerKind.DENSE_CONV: self.dense_conv, LayerKind.GROUPED_CONV: self.grouped_conv,
                LayerKind.LINEAR: self.linear}[kind]

    @classmethod
    def uniform(cls, step: int) -> "Target":
        """One channel step for every layer kind (`round_to=step`)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise InputError(f"round_to must be a positive integer or None (the target decides), got {step!r}")
        return cls(f"round_to={step}", step, step, step, per_group_steps=False)

    @property
    def grouped_convs(self) -> GroupedConv:
        """How grouped convolutions are pruned for this target: by whole groups when each group's width must land
        on a step > 1 (a runtime's per-group kernel: widths of 4-32 per group cannot land on 8 or 16), else the
        same channels inside every group (with `round_to`, the layer's width G x k' lands on the step)."""
        return GroupedConv.WHOLE if self.grouped_conv > 1 and self.per_group_steps else GroupedConv.WITHIN

    def constraints(self, group: ChannelGroup, layers: Mapping[str, WeightedLayer],
                    kernel_steps: Mapping[str, int] | None = None) -> tuple[tuple[np.ndarray, int], ...]:
        """(channels, step) per member layer: the count of `channels` kept must be a multiple of `step`.

        `layers` maps the weight parameters of conv/linear-like layers to their layer (Analysis.layers);
        `kernel_steps` the weights whose op needs a channel multiple to run at all (Analysis.kernel_steps):
        their block is the least common multiple of that and the target's step, whatever the target.

        A layer sees the group channels in its slot; each channel may cover w positions
        (flatten, merged heads or shuffled pairs), so its step is block / gcd(block, w).
        A grouped conv's weight column stands for G inputs, one per group: with steps on the
        layer's width (not `per_group_steps`) w is G times the column's positions.
        Layers that see only part of a group (the convs that each add 32 channels to a
        DenseNet block) get their own constraint, so each of them lands on the block.
        """
        if not kernel_steps and self.dense_conv == self.grouped_conv == self.linear == 1:
            return ()  # every block is 1: nothing to constrain
        out = {}
        covers: dict[int, tuple[bytes, int | None]] = {}  # per distinct (channels, counts) of the group's slots
        for slot, (channels, counts) in group.member_channels.items():
            layer = layers.get(slot.name) if slot.role in (Role.PRODUCER, Role.CONSUMER) else None
            block = math.lcm(self.step(layer.kind), (kernel_steps or {}).get(slot.name, 1)) if layer is not None else 1
            if block == 1:
                continue
            if id(counts) not in covers:  # slots of one index map share these arrays (ChannelGroup.member_channels)
                covers[id(counts)] = channels.tobytes(), int(counts[0]) if (counts == counts[0]).all() else None
            key, positions = covers[id(counts)]  # positions per channel, when every channel has as many
            if positions is None:
                continue
            inputs_per_column = layer.groups if slot.dim == 1 and not self.per_group_steps else 1
            step = block // math.gcd(block, positions * inputs_per_column)
            if step > 1:
                out[key] = (channels, math.lcm(step, out.get(key, (None, 1))[1]))  # every layer on these channels
        return tuple(out.values())


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (avx2, avx512f, avx512_vnni...); None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return None


def x86_block() -> int:
    """16 with AVX-512, 8 with AVX2, else 1 (read from /proc/cpuinfo; 8 when it cannot be read)."""
    flags = cpu_flags()
    if flags is None:
        return 8
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 1


def ort_x86() -> Target:
    """ONNX Runtime on this x86 CPU; the name says which vector width chose the block (ort-x86/avx512, /avx2)."""
    block = x86_block()
    isa = {16: "avx512", 8: "avx2"}.get(block, "scalar")
    return Target(f"ort-x86/{isa}", dense_conv=block, grouped_conv=block, linear=min(block, 8), one_block=block > 1)


NONE = Target("none")
XNNPACK = Target("xnnpack")


def machine_rule() -> Target:
    """The hand-written rule of this machine: ort-x86 on x86-64, else xnnpack (what "auto" is without a profile)."""
    return ort_x86() if platform.machine().lower() in ("x86_64", "amd64", "i686") else XNNPACK


#: The hand-written targets by name. "auto" is not one of them: it may read a measured profile from disk,
#: so graphprune.runtimes.profiles.resolve_target turns it into a Target where a run starts.
HAND_WRITTEN = {"ort-x86": ort_x86, "xnnpack": lambda: XNNPACK, "arm": lambda: Target("arm"), "none": lambda: NONE}
