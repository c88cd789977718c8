"""VGG: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition" (ICLR 2015).

Layout follows torchvision (``features`` Sequential, ``avgpool`` AdaptiveAvgPool2d((7, 7)),
``classifier`` Sequential) so parameter counts and state-dict keys match.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import Tensor, nn

__all__ = ["VGG", "vgg16_bn", "MODELS"]

# Configuration "D" of the paper (16 weight layers); "M" is a 2x2 max-pool.
_CFG_D: tuple[Union[int, str], ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


def _make_features(cfg: Sequence[Union[int, str]], batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_ch = int(v)
        layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU())
        in_ch = out_ch
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG network (Simonyan & Zisserman, 2015)."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def vgg16_bn(num_classes: int = 1000) -> VGG:
    """VGG-16 with batch norm (Simonyan & Zisserman, "Very Deep Convolutional Networks...", 2015)."""
    return VGG(_make_features(_CFG_D, batch_norm=True), num_classes=num_classes)


MODELS: tuple[tuple[str, Callable[..., nn.Module], tuple[int, ...]], ...] = (
    ("vgg16_bn", vgg16_bn, (1, 3, 224, 224)),
)
