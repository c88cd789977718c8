"""RegNetY-400MF reference architecture (torchvision layout, our own code)."""

from __future__ import annotations

import torch
from torch import nn

from graphprune.models.blocks import init_conv_, ConvBNAct, SqueezeExcitation


class BottleneckTransform(nn.Module):
    """1x1 conv, grouped 3x3 conv (carries the stride), squeeze-and-excitation, linear 1x1 conv."""

    def __init__(self, width_in: int, width_out: int, stride: int, group_width: int,
                 bottleneck_multiplier: float, se_ratio: float | None) -> None:
        super().__init__()
        w_b = int(round(width_out * bottleneck_multiplier))
        if w_b % group_width != 0:
            raise ValueError(f"RegNet: bottleneck width {w_b} is not a multiple of group width {group_width}")
        groups = w_b // group_width
        self.a = ConvBNAct(width_in, w_b, 1, activation=nn.ReLU)
        self.b = ConvBNAct(w_b, w_b, 3, stride, groups=groups, activation=nn.ReLU)
        if se_ratio:
            self.se = SqueezeExcitation(w_b, int(round(se_ratio * width_in)), nn.ReLU, nn.Sigmoid)
        else:
            self.se = nn.Identity()
        self.c = ConvBNAct(w_b, width_out, 1, activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.se(self.b(self.a(x))))


class ResBottleneckBlock(nn.Module):
    """Residual bottleneck block; a strided 1x1 conv + BN projects the shortcut when the shape changes."""

    def __init__(self, width_in: int, width_out: int, stride: int, group_width: int = 1,
                 bottleneck_multiplier: float = 1.0, se_ratio: float | None = None) -> None:
        super().__init__()
        self.proj = None
        if width_in != width_out or stride != 1:
            self.proj = ConvBNAct(width_in, width_out, 1, stride, activation=None)
        self.f = BottleneckTransform(width_in, width_out, stride, group_width, bottleneck_multiplier, se_ratio)
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.proj(x) if self.proj is not None else x
        return self.activation(shortcut + self.f(x))


class RegNet(nn.Module):
    """RegNet (Radosavovic et al., "Designing Network Design Spaces", CVPR 2020)."""

    def __init__(self, depths=(1, 3, 6, 6), widths=(48, 104, 208, 440), group_width: int = 8,
                 bottleneck_multiplier: float = 1.0, se_ratio: float | None = 0.25, stem_width: int = 32,
                 num_classes: int = 1000) -> None:
        super().__init__()
        if len(depths) != len(widths):
            raise ValueError(f"RegNet: {len(depths)} depths but {len(widths)} widths")
        self.stem = ConvBNAct(3, stem_width, 3, 2, activation=nn.ReLU)
        stages: list[tuple[str, nn.Module]] = []
        width_in = stem_width
        for i, (depth, width_out) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(
                    ResBottleneckBlock(
                        width_in if j == 0 else width_out,
                        width_out,
                        2 if j == 0 else 1,
                        group_width,
                        bottleneck_multiplier,
                        se_ratio,
                    )
                )
            stages.append((f"block{i + 1}", nn.Sequential(*blocks)))
            width_in = width_out
        self.trunk_output = nn.Sequential()
        for name, stage in stages:
            self.trunk_output.add_module(name, stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width_in, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_(m)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.trunk_output(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def regnet_y_400mf(num_classes: int = 1000) -> RegNet:
    """RegNetY-400MF (Radosavovic et al., CVPR 2020), 224x224 input."""
    return RegNet((1, 3, 6, 6), (48, 104, 208, 440), group_width=8, bottleneck_multiplier=1.0, se_ratio=0.25,
                  stem_width=32, num_classes=num_classes)


MODELS = (("regnet_y_400mf", regnet_y_400mf, (1, 3, 224, 224)),)
