"""Small building blocks shared by the reference architectures (all torch.fx traceable, no in-place ops)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

ActFactory = Optional[Callable[[], nn.Module]]


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going more than 10% below it."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def init_conv_(conv: nn.Conv2d) -> None:
    """Kaiming-normal init with the fan-in of each output unit (groups-aware), bias zero.

    torchvision uses ``mode="fan_out"``, which for a depthwise conv divides the weight variance by the channel
    count; untrained depthwise nets then give ~1e-10 outputs in eval mode (running stats are the identity).
    The fan-in mode keeps activations O(1) at initialisation, so parity checks compare meaningful numbers.
    """
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + optional activation; padding keeps 'same' size at stride 1."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: ActFactory = nn.ReLU,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        padding = (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """Channel attention: global pool, 1x1 conv reduce, activation, 1x1 conv expand, gate, broadcast multiply."""

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        activation: Callable[[], nn.Module] = nn.ReLU,
        scale_activation: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.activation = activation()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.scale_activation = scale_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        scale = self.scale_activation(scale)
        return scale * x


class StochasticDepth(nn.Module):
    """Per-sample residual-branch drop ("row" mode); the identity in eval mode or when p == 0."""

    def __init__(self, p: float, ndim: int = 4) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"StochasticDepth: drop probability must be in [0, 1], got {p}")
        self.p = float(p)
        # Index that keeps the batch dim and a size-1 slice of every other dim (static, so fx can trace it).
        self._probe_index = (slice(None),) + (slice(0, 1),) * (ndim - 1)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0.0:
            survival = 1.0 - self.p
            keep = torch.bernoulli(torch.full_like(x[self._probe_index], survival))
            return x * keep / survival
        return x
