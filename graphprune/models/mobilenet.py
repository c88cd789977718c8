"""MobileNetV2 and MobileNetV3-Large reference architectures (torchvision layouts, our own code)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from graphprune.models.blocks import init_conv_, ConvBNAct, SqueezeExcitation, make_divisible


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            init_conv_(m)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------- MobileNetV2


class ConvBNReLU6(ConvBNAct):
    """Conv2d + BatchNorm2d + ReLU6, the MobileNetV2 basic layer."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, activation=nn.ReLU6)


class InvertedResidualV2(nn.Module):
    """MobileNetV2 block: optional 1x1 expand, 3x3 depthwise, linear 1x1 project, residual when shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidualV2: stride must be 1 or 2, got {stride}")
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018)."""

    # expansion t, output channels c, repeats n, first stride s
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, round_nearest: int = 8,
                 dropout: float = 0.2) -> None:
        super().__init__()
        input_channel = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [ConvBNReLU6(3, input_channel, stride=2)]
        for t, c, n, s in self.SETTINGS:
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidualV2(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(ConvBNReLU6(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2(num_classes: int = 1000) -> MobileNetV2:
    """MobileNetV2 1.0x, 224x224 input (3,504,872 parameters at 1000 classes)."""
    return MobileNetV2(num_classes=num_classes)


# --------------------------------------------------------------------------------------------- MobileNetV3


class _V3Setting(NamedTuple):
    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int


_V3_LARGE = (
    _V3Setting(16, 3, 16, 16, False, False, 1),
    _V3Setting(16, 3, 64, 24, False, False, 2),
    _V3Setting(24, 3, 72, 24, False, False, 1),
    _V3Setting(24, 5, 72, 40, True, False, 2),
    _V3Setting(40, 5, 120, 40, True, False, 1),
    _V3Setting(40, 5, 120, 40, True, False, 1),
    _V3Setting(40, 3, 240, 80, False, True, 2),
    _V3Setting(80, 3, 200, 80, False, True, 1),
    _V3Setting(80, 3, 184, 80, False, True, 1),
    _V3Setting(80, 3, 184, 80, False, True, 1),
    _V3Setting(80, 3, 480, 112, True, True, 1),
    _V3Setting(112, 3, 672, 112, True, True, 1),
    _V3Setting(112, 5, 672, 160, True, True, 2),
    _V3Setting(160, 5, 960, 160, True, True, 1),
    _V3Setting(160, 5, 960, 160, True, True, 1),
)

_V3_BN = {"bn_eps": 0.001, "bn_momentum": 0.01}


class InvertedResidualV3(nn.Module):
    """MobileNetV3 block: optional 1x1 expand, kxk depthwise, optional SE, linear 1x1 project, residual."""

    def __init__(self, cfg: _V3Setting) -> None:
        super().__init__()
        if cfg.stride not in (1, 2):
            raise ValueError(f"InvertedResidualV3: stride must be 1 or 2, got {cfg.stride}")
        self.use_res_connect = cfg.stride == 1 and cfg.in_channels == cfg.out_channels
        act: Callable[[], nn.Module] = nn.Hardswish if cfg.use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if cfg.expanded != cfg.in_channels:
            layers.append(ConvBNAct(cfg.in_channels, cfg.expanded, 1, activation=act, **_V3_BN))
        layers.append(
            ConvBNAct(cfg.expanded, cfg.expanded, cfg.kernel, cfg.stride, groups=cfg.expanded, activation=act, **_V3_BN)
        )
        if cfg.use_se:
            squeeze = make_divisible(cfg.expanded // 4, 8)
            layers.append(SqueezeExcitation(cfg.expanded, squeeze, nn.ReLU, nn.Hardsigmoid))
        layers.append(ConvBNAct(cfg.expanded, cfg.out_channels, 1, activation=None, **_V3_BN))
        self.block = nn.Sequential(*layers)
        self.out_channels = cfg.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = result + x
        return result


class MobileNetV3(nn.Module):
    """MobileNetV3 (Howard et al., "Searching for MobileNetV3", ICCV 2019)."""

    def __init__(self, settings=_V3_LARGE, last_channel: int = 1280, num_classes: int = 1000,
                 dropout: float = 0.2) -> None:
        super().__init__()
        first = settings[0].in_channels
        layers: list[nn.Module] = [ConvBNAct(3, first, 3, 2, activation=nn.Hardswish, **_V3_BN)]
        layers += [InvertedResidualV3(cfg) for cfg in settings]
        last_in = settings[-1].out_channels
        last_conv = 6 * last_in
        layers.append(ConvBNAct(last_in, last_conv, 1, activation=nn.Hardswish, **_V3_BN))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),
            nn.Hardswish(),
            nn.Dropout(p=dropout),
            nn.Linear(last_channel, num_classes),
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v3_large(num_classes: int = 1000) -> MobileNetV3:
    """MobileNetV3-Large 1.0x, 224x224 input (5,483,032 parameters at 1000 classes)."""
    return MobileNetV3(_V3_LARGE, last_channel=1280, num_classes=num_classes)


MODELS = (
    ("mobilenet_v2", mobilenet_v2, (1, 3, 224, 224)),
    ("mobilenet_v3_large", mobilenet_v3_large, (1, 3, 224, 224)),
)
