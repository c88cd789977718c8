"""Deployment targets: how many channels a runtime wants per layer kind.

ONNX Runtime's x86 CPU convolutions use the blocked NCHWc layout only when channel counts
are multiples of its block: 16 floats with AVX-512, 8 with AVX2 (and input channels a
multiple of 4, which the block implies). XNNPACK and ARM kernels need no alignment.
A target gives a channel step per layer kind; a group's step is the largest step of the
layers its channels feed or come from, converted from positions to group channels.
"""
from __future__ import annotations

import enum
import math
import platform
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

import numpy as np
import torch.nn as nn

from .errors import InputError
from .groups import ChannelGroup, Role


class LayerKind(enum.Enum):
    DENSE_CONV = "dense conv"
    GROUPED_CONV = "grouped/depthwise conv"
    LINEAR = "linear"


@dataclass(frozen=True)
class Target:
    """Channel-count steps of one runtime, per layer kind (1 = any count is fine)."""

    name: str
    dense_conv: int = 1
    grouped_conv: int = 1
    linear: int = 1

    def step(self, kind: LayerKind) -> int:
        return {LayerKind.DENSE_CONV: self.dense_conv, LayerKind.GROUPED_CONV: self.grouped_conv,
                LayerKind.LINEAR: self.linear}[kind]

    def group_step(self, group: ChannelGroup, modules: Mapping[str, nn.Module]) -> int:
        """The step, in group channels, that puts every member layer's channel count on its block."""
        step = 1
        for slot, index_map in group.members.items():
            if slot.role not in (Role.PRODUCER, Role.CONSUMER):
                continue
            kind = layer_kind(modules.get(slot.name.rpartition(".")[0]))
            if kind is None or self.step(kind) == 1:
                continue
            positions_per_channel = index_map.size / max(1, np.unique(index_map).size)
            if positions_per_channel != int(positions_per_channel):
                continue
            block = self.step(kind)
            step = math.lcm(step, block // math.gcd(block, int(positions_per_channel)))
        return step


def layer_kind(module: nn.Module | None) -> LayerKind | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        return LayerKind.DENSE_CONV if module.groups == 1 else LayerKind.GROUPED_CONV
    if isinstance(module, (nn.Linear, nn.MultiheadAttention)):
        return LayerKind.LINEAR
    return None


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
    block = x86_block()
    return Target("ort-x86", dense_conv=block, grouped_conv=block, linear=min(block, 8))


NONE = Target("none")
XNNPACK = Target("xnnpack")


def resolve_target(target: str | Target) -> Target:
    """A Target from a name: "auto" (ort-x86 on x86-64, else xnnpack), "ort-x86", "xnnpack", "arm", "none"."""
    if isinstance(target, Target):
        return target
    machine = platform.machine().lower()
    names = {"ort-x86": ort_x86, "xnnpack": lambda: XNNPACK, "arm": lambda: Target("arm"), "none": lambda: NONE,
             "auto": lambda: ort_x86() if machine in ("x86_64", "amd64", "i686") else XNNPACK}
    if target not in names:
        raise InputError(f"unknown target {target!r}; use one of {sorted(names)} or a graphprune.targets.Target")
    return names[target]()
