"""A small U-Net: Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation" (MICCAI 2015).

Base width 32, four encoder levels (32/64/128/256 channels at 1, 1/2, 1/4, 1/8
resolution) and a 512-channel bottleneck at 1/16. The two deepest decoder levels
upsample with ``ConvTranspose2d(k=2, s=2)``; the two shallower ones use bilinear
``F.interpolate`` followed by a 1x1 conv. Skips are joined with
``torch.cat([skip, up], dim=1)``. Input 3x128x128, output a 2-class logit map at full
resolution.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DoubleConv", "Down", "UpTransposed", "UpBilinear", "UNet", "unet", "MODELS"]


class DoubleConv(nn.Module):
    """(3x3 conv, BN, ReLU) x 2."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))


class Down(nn.Module):
    """2x2 max-pool then DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv = DoubleConv(in_ch, out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.pool(x))


class UpTransposed(nn.Module):
    """ConvTranspose2d(k=2, s=2) upsampling to half the channels, concat with the skip, DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_ch // 2 + out_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = self.up(x)
        return self.conv(torch.cat([skip, up], dim=1))


class UpBilinear(nn.Module):
    """Bilinear x2 interpolation, 1x1 conv to half the channels, concat with the skip, DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_ch, in_ch // 2, kernel_size=1)
        self.conv = DoubleConv(in_ch // 2 + out_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        up = self.reduce(up)
        return self.conv(torch.cat([skip, up], dim=1))


class UNet(nn.Module):
    """U-Net encoder-decoder with skip connections (Ronneberger et al., 2015)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base: int = 32) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = base, base * 2, base * 4, base * 8, base * 16
        self.inc = DoubleConv(in_channels, c1)
        self.down1 = Down(c1, c2)
        self.down2 = Down(c2, c3)
        self.down3 = Down(c3, c4)
        self.down4 = Down(c4, c5)
        self.up1 = UpTransposed(c5, c4)
        self.up2 = UpTransposed(c4, c3)
        self.up3 = UpBilinear(c3, c2)
        self.up4 = UpBilinear(c2, c1)
        self.outc = nn.Conv2d(c1, num_classes, kernel_size=1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        y = self.up1(x5, x4)
        y = self.up2(y, x3)
        y = self.up3(y, x2)
        y = self.up4(y, x1)
        return self.outc(y)


def unet(num_classes: int = 2) -> UNet:
    """Small U-Net (Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation", 2015)."""
    return UNet(in_channels=3, num_classes=num_classes, base=32)


MODELS: tuple[tuple[str, Callable[..., nn.Module], tuple[int, ...]], ...] = (
    ("unet", unet, (1, 3, 128, 128)),
)
