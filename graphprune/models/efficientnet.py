"""EfficientNet-B0 reference architecture (torchvision layout, our own code)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from graphprune.models.blocks import init_conv_, ConvBNAct, SqueezeExcitation, StochasticDepth, make_divisible


class _MBConvSetting(NamedTuple):
    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    num_layers: int


_B0 = (
    _MBConvSetting(1, 3, 1, 32, 16, 1),
    _MBConvSetting(6, 3, 2, 16, 24, 2),
    _MBConvSetting(6, 5, 2, 24, 40, 2),
    _MBConvSetting(6, 3, 2, 40, 80, 3),
    _MBConvSetting(6, 5, 1, 80, 112, 3),
    _MBConvSetting(6, 5, 2, 112, 192, 4),
    _MBConvSetting(6, 3, 1, 192, 320, 1),
)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand, kxk depthwise, SE, linear 1x1 project, stochastic-depth residual."""

    def __init__(self, expand_ratio: int, kernel: int, stride: int, in_channels: int, out_channels: int,
                 stochastic_depth_prob: float) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv: stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and in_channels == out_channels
        expanded = make_divisible(in_channels * expand_ratio, 8)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvBNAct(in_channels, expanded, 1, activation=nn.SiLU))
        layers.append(ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, activation=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, in_channels // 4), nn.SiLU, nn.Sigmoid))
        layers.append(ConvBNAct(expanded, out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result = result + x
        return result


class EfficientNet(nn.Module):
    """EfficientNet (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019)."""

    def __init__(self, settings=_B0, num_classes: int = 1000, dropout: float = 0.2,
                 stochastic_depth_prob: float = 0.2) -> None:
        super().__init__()
        stem_out = settings[0].in_channels
        layers: list[nn.Module] = [ConvBNAct(3, stem_out, 3, 2, activation=nn.SiLU)]
        total_blocks = sum(cfg.num_layers for cfg in settings)
        block_id = 0
        for cfg in settings:
            stage: list[nn.Module] = []
            for i in range(cfg.num_layers):
                sd_prob = stochastic_depth_prob * float(block_id) / total_blocks
                stage.append(
                    MBConv(
                        cfg.expand_ratio,
                        cfg.kernel,
                        cfg.stride if i == 0 else 1,
                        cfg.in_channels if i == 0 else cfg.out_channels,
                        cfg.out_channels,
                        sd_prob,
                    )
                )
                block_id += 1
            layers.append(nn.Sequential(*stage))
        last_in = settings[-1].out_channels
        last_out = 4 * last_in
        layers.append(ConvBNAct(last_in, last_out, 1, activation=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_out, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_(m)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def efficientnet_b0(num_classes: int = 1000) -> EfficientNet:
    """EfficientNet-B0 (Tan & Le, ICML 2019), 224x224 input."""
    return EfficientNet(_B0, num_classes=num_classes, dropout=0.2, stochastic_depth_prob=0.2)


MODELS = (("efficientnet_b0", efficientnet_b0, (1, 3, 224, 224)),)
