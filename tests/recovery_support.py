"""Small models and data for the recovery tests (and the torchrun worker they start)."""
from __future__ import annotations

import torch
import torch.nn as nn


class ResidualCNN(nn.Module):
    """conv-BN-ReLU stem, one residual block, global pool, linear head: 10 classes on 3x12x12 images."""

    def __init__(self, width: int = 16, norm: bool = True):
        super().__init__()
        norm_layer = (lambda c: nn.BatchNorm2d(c)) if norm else (lambda c: nn.Identity())
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn0 = norm_layer(width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        y = torch.relu(self.bn0(self.stem(x)))
        y = y + self.conv2(torch.relu(self.bn1(self.conv1(y))))
        return self.fc(torch.relu(y).mean((2, 3)))


def images(n_batches: int, rows: int, seed: int, labels: bool = False) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        x = torch.randn(rows, 3, 12, 12, generator=g)
        out.append((x, torch.randint(0, 10, (rows,), generator=g)) if labels else x)
    return out


def pruned(width: int = 16, norm: bool = True, ratio: float = 0.5):
    import graphprune
    torch.manual_seed(0)
    model = ResidualCNN(width, norm).eval()
    return model, graphprune.prune_graph(model, torch.randn(1, 3, 12, 12), ratio=ratio, target="none")
