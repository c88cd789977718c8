"""ConvNeXt-Tiny reference architecture (torchvision layout, our own code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from graphprune.models.blocks import StochasticDepth


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor (permute to channels-last, normalise, permute back)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


class Permute(nn.Module):
    """Permute the dims of the input (a module so it shows up by name in Sequentials)."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class CNBlock(nn.Module):
    """ConvNeXt block: 7x7 depthwise conv, channels-last LayerNorm + MLP (4x), layer scale, stochastic depth, residual."""

    def __init__(self, dim: int, layer_scale: float, stochastic_depth_prob: float) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute((0, 2, 3, 1)),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute((0, 3, 1, 2)),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.layer_scale * self.block(x)
        result = self.stochastic_depth(result)
        return result + x


class ConvNeXt(nn.Module):
    """ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022)."""

    def __init__(self, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), stochastic_depth_prob: float = 0.1,
                 layer_scale: float = 1e-6, num_classes: int = 1000) -> None:
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"ConvNeXt: {len(depths)} depths but {len(dims)} dims")
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4, bias=True), LayerNorm2d(dims[0], eps=1e-6))
        ]
        total_blocks = sum(depths)
        block_id = 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stage = []
            for _ in range(depth):
                sd_prob = stochastic_depth_prob * block_id / max(1.0, total_blocks - 1.0)
                stage.append(CNBlock(dim, layer_scale, sd_prob))
                block_id += 1
            layers.append(nn.Sequential(*stage))
            if i + 1 < len(dims):
                layers.append(
                    nn.Sequential(LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, dims[i + 1], kernel_size=2, stride=2))
                )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(1), nn.Linear(dims[-1], num_classes)
        )

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        return self.classifier(x)


def convnext_tiny(num_classes: int = 1000) -> ConvNeXt:
    """ConvNeXt-Tiny (Liu et al., CVPR 2022), 224x224 input."""
    return ConvNeXt((3, 3, 9, 3), (96, 192, 384, 768), stochastic_depth_prob=0.1, num_classes=num_classes)


MODELS = (("convnext_tiny", convnext_tiny, (1, 3, 224, 224)),)
