"""Vision Transformer reference architectures: ViT-B/16 and a tiny test ViT (torchvision layout, our own code)."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLPBlock(nn.Sequential):
    """Transformer MLP: Linear, GELU, Dropout, Linear, Dropout."""

    def __init__(self, in_dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(in_dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, in_dim),
            nn.Dropout(dropout),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: LN, multi-head self-attention, residual; LN, MLP, residual."""

    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float,
                 attention_dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, dropout=attention_dropout,
                                                    batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(input)
        x = self.self_attention(x, x, x, need_weights=False)[0]
        x = self.dropout(x)
        x = x + input
        y = self.ln_2(x)
        y = self.mlp(y)
        return x + y


class Encoder(nn.Module):
    """Learned position embedding, dropout, a stack of encoder blocks, final LayerNorm."""

    def __init__(self, seq_length: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int,
                 dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(
            *[EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout) for _ in range(num_layers)]
        )
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input + self.pos_embedding
        x = self.dropout(x)
        x = self.layers(x)
        return self.ln(x)


class VisionTransformer(nn.Module):
    """Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021)."""

    def __init__(self, image_size: int = 224, patch_size: int = 16, num_layers: int = 12, num_heads: int = 12,
                 hidden_dim: int = 768, mlp_dim: int = 3072, dropout: float = 0.0, attention_dropout: float = 0.0,
                 num_classes: int = 1000) -> None:
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(f"VisionTransformer: image_size {image_size} is not divisible by patch_size {patch_size}")
        if hidden_dim % num_heads != 0:
            raise ValueError(f"VisionTransformer: hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.num_classes = num_classes

        self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        seq_length = (image_size // patch_size) ** 2 + 1  # + class token
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout)
        self.seq_length = seq_length
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(hidden_dim, num_classes))

        fan_in = self.conv_proj.in_channels * self.conv_proj.kernel_size[0] * self.conv_proj.kernel_size[1]
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        # torchvision zero-initialises the head; a small random init keeps untrained outputs non-degenerate.
        nn.init.trunc_normal_(self.heads.head.weight, std=0.02)
        nn.init.zeros_(self.heads.head.bias)

    def _process_input(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        n_h = self.image_size // self.patch_size
        n_w = self.image_size // self.patch_size
        x = self.conv_proj(x)  # (n, hidden_dim, n_h, n_w)
        x = x.reshape(n, self.hidden_dim, n_h * n_w)
        x = x.permute(0, 2, 1)  # (n, seq, hidden_dim)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._process_input(x)
        n = x.shape[0]
        batch_class_token = self.class_token.expand(n, -1, -1)
        x = torch.cat([batch_class_token, x], dim=1)
        x = self.encoder(x)
        x = x[:, 0]
        return self.heads(x)


def vit_b_16(num_classes: int = 1000) -> VisionTransformer:
    """ViT-B/16 (Dosovitskiy et al., ICLR 2021), 224x224 input."""
    return VisionTransformer(224, 16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072,
                             num_classes=num_classes)


def vit_tiny(num_classes: int = 10) -> VisionTransformer:
    """Tiny ViT test model (Dosovitskiy et al., ICLR 2021 architecture): 64x64 input, patch 16, 4 layers, width 192."""
    return VisionTransformer(64, 16, num_layers=4, num_heads=3, hidden_dim=192, mlp_dim=768, num_classes=num_classes)


MODELS = (
    ("vit_b_16", vit_b_16, (1, 3, 224, 224)),
    ("vit_tiny", vit_tiny, (1, 3, 64, 64)),
)
