"""A tiny YOLO-style detector in the spirit of Redmon et al., "You Only Look Once" (CVPR 2016) and its CSP/PAN descendants.

Backbone: strided conv-BN-SiLU stages with C2f blocks (a 1x1 conv whose output is
``chunk(2, 1)``-split, bottlenecks chained on one half, everything concatenated) and an
SPPF block. Neck: FPN top-down path (``nn.Upsample(scale_factor=2, mode="nearest")`` +
``torch.cat``) then PAN bottom-up path (strided 3x3 conv + ``torch.cat``). Heads: one
per scale (strides 8, 16, 32), each emitting ``num_anchors * (5 + num_classes)``
channels. ``forward`` returns a tuple of the three head maps. Input 3x256x256.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["ConvBNSiLU", "CSPBottleneck", "C2f", "SPPF", "DetectHead", "YoloTiny", "yolo_tiny", "MODELS"]


class ConvBNSiLU(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU, 'same' padding."""

    def __init__(self, in_ch: int, out_ch: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=k, stride=s, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class CSPBottleneck(nn.Module):
    """Two 3x3 ConvBNSiLU with an optional residual add."""

    def __init__(self, ch: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = ConvBNSiLU(ch, ch, 3)
        self.cv2 = ConvBNSiLU(ch, ch, 3)
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with two-way split: cv1 -> chunk(2) -> n bottlenecks on the second half -> concat all -> cv2."""

    def __init__(self, in_ch: int, out_ch: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.hidden = out_ch // 2
        self.cv1 = ConvBNSiLU(in_ch, 2 * self.hidden, 1)
        self.m = nn.ModuleList(CSPBottleneck(self.hidden, shortcut) for _ in range(n))
        self.cv2 = ConvBNSiLU((2 + n) * self.hidden, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.cv1(x).chunk(2, 1)
        ys = [a, b]
        for block in self.m:
            ys.append(block(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools, concatenated."""

    def __init__(self, in_ch: int, out_ch: int, k: int = 5) -> None:
        super().__init__()
        hidden = in_ch // 2
        self.cv1 = ConvBNSiLU(in_ch, hidden, 1)
        self.pool = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.cv2 = ConvBNSiLU(hidden * 4, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        y3 = self.pool(y2)
        return self.cv2(torch.cat([x, y1, y2, y3], 1))


class DetectHead(nn.Module):
    """Per-scale head: a 3x3 ConvBNSiLU then a 1x1 prediction conv (boxes, objectness, classes per anchor)."""

    def __init__(self, in_ch: int, num_outputs: int) -> None:
        super().__init__()
        self.stem = ConvBNSiLU(in_ch, in_ch, 3)
        self.pred = nn.Conv2d(in_ch, num_outputs, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pred(self.stem(x))


class YoloTiny(nn.Module):
    """Tiny CSP backbone + FPN/PAN neck + 3-scale anchor heads (after Redmon et al., 2016)."""

    def __init__(self, num_classes: int = 80, num_anchors: int = 3, width: int = 16) -> None:
        super().__init__()
        w1, w2, w3, w4, w5 = width, width * 2, width * 4, width * 8, width * 16
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        no = num_anchors * (5 + num_classes)
        # Backbone (strides 2, 4, 8, 16, 32).
        self.stem = ConvBNSiLU(3, w1, 3, 2)
        self.down2 = ConvBNSiLU(w1, w2, 3, 2)
        self.c2 = C2f(w2, w2, n=1)
        self.down3 = ConvBNSiLU(w2, w3, 3, 2)
        self.c3 = C2f(w3, w3, n=2)
        self.down4 = ConvBNSiLU(w3, w4, 3, 2)
        self.c4 = C2f(w4, w4, n=2)
        self.down5 = ConvBNSiLU(w4, w5, 3, 2)
        self.c5 = C2f(w5, w5, n=1)
        self.sppf = SPPF(w5, w5)
        # FPN (top-down).
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.fpn4 = C2f(w5 + w4, w4, n=1, shortcut=False)
        self.fpn3 = C2f(w4 + w3, w3, n=1, shortcut=False)
        # PAN (bottom-up).
        self.pan_down3 = ConvBNSiLU(w3, w3, 3, 2)
        self.pan4 = C2f(w3 + w4, w4, n=1, shortcut=False)
        self.pan_down4 = ConvBNSiLU(w4, w4, 3, 2)
        self.pan5 = C2f(w4 + w5, w5, n=1, shortcut=False)
        # Heads.
        self.head3 = DetectHead(w3, no)
        self.head4 = DetectHead(w4, no)
        self.head5 = DetectHead(w5, no)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.c2(self.down2(self.stem(x)))
        p3 = self.c3(self.down3(x))
        p4 = self.c4(self.down4(p3))
        p5 = self.sppf(self.c5(self.down5(p4)))

        n4 = self.fpn4(torch.cat([self.upsample(p5), p4], 1))
        out3 = self.fpn3(torch.cat([self.upsample(n4), p3], 1))
        out4 = self.pan4(torch.cat([self.pan_down3(out3), n4], 1))
        out5 = self.pan5(torch.cat([self.pan_down4(out4), p5], 1))
        return self.head3(out3), self.head4(out4), self.head5(out5)


def yolo_tiny(num_classes: int = 80) -> YoloTiny:
    """Tiny YOLO-style detector (after Redmon et al., "You Only Look Once: Unified, Real-Time Object Detection", 2016)."""
    return YoloTiny(num_classes=num_classes)


MODELS: tuple[tuple[str, Callable[..., nn.Module], tuple[int, ...]], ...] = (
    ("yolo_tiny", yolo_tiny, (1, 3, 256, 256)),
)
