"""Small models, one per op family the core pass must couple correctly (input 2x3x16x16 unless stated)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def cbr(cin, cout, k=3, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups), nn.BatchNorm2d(cout), nn.ReLU())


class ConvChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(16, 24)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.b(self.a(x))), 1))


class Conv1dChain(nn.Module):
    shape = (2, 4, 32)

    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv1d(4, 16, 3, padding=1), nn.BatchNorm1d(16), nn.Conv1d(16, 8, 3)

    def forward(self, x):
        return F.max_pool1d(self.c2(F.relu(self.bn(self.c1(x)))), 2)


class GroupedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.g = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(32)
        self.out = nn.Conv2d(32, 6, 1)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.g(self.a(x)))))


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.dw = cbr(16, 16, groups=16)
        self.dw2 = nn.Conv2d(16, 32, 3, padding=1, groups=16)  # depth multiplier 2
        self.pw = nn.Conv2d(32, 6, 1)

    def forward(self, x):
        return self.pw(F.relu6(self.dw2(self.dw(self.a(x)))))


class TokenMLP(nn.Module):
    shape = (2, 7, 12)

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 32), nn.Linear(32, 24), nn.Linear(24, 12)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(F.gelu(self.fc1(x)))))


class Activations(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.ModuleList([nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1) for i in range(6)])
        self.acts = nn.ModuleList([nn.SiLU(), nn.Hardswish(), nn.LeakyReLU(0.1), nn.GELU(), nn.ELU(), nn.Hardsigmoid()])
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        for conv, act in zip(self.c, self.acts):
            x = act(conv(x))
        x = torch.sigmoid(x) + x.relu() + torch.tanh(x)
        return self.out(F.dropout(nn.functional.relu6(x), 0.5, training=self.training))


class Pooling(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbr(3, 12), cbr(12, 16), cbr(16, 20)
        self.mp, self.ap = nn.MaxPool2d(2), nn.AvgPool2d(2)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(20 * 2, 3)

    def forward(self, x):
        x = self.mp(self.a(x))
        x = F.avg_pool2d(self.b(x), 2)
        x = self.drop(self.c(self.ap(x)))
        x = torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], 2)
        return self.fc(torch.flatten(x, 1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.b1 = nn.Sequential(cbr(16, 8), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.b2 = nn.Sequential(cbr(16, 8), nn.Conv2d(8, 16, 3, padding=1))
        self.down = nn.Sequential(nn.Conv2d(16, 24, 1, stride=2), nn.BatchNorm2d(24))
        self.b3 = nn.Sequential(cbr(16, 12), nn.Conv2d(12, 24, 3, stride=2, padding=1))
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.b1(x))
        x = x - self.b2(x)
        x = torch.add(self.down(x), self.b3(x))
        return self.head(x)


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, 24)
        self.fc1, self.fc2 = nn.Conv2d(24, 6, 1), nn.Conv2d(6, 24, 1)
        self.l1, self.l2 = nn.Linear(24, 8), nn.Linear(8, 24)
        self.out = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        x = self.a(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        x = x * s
        b, c, _, _ = x.shape
        t = torch.sigmoid(self.l2(F.relu(self.l1(x.mean((2, 3))))))
        x = x * t.view(b, c, 1, 1)
        return self.out(x)


class DenseBlock(nn.Module):
    def __init__(self, layers=3, growth=6):
        super().__init__()
        self.stem = cbr(3, 8)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(8 + i * growth), nn.ReLU(), nn.Conv2d(8 + i * growth, growth, 3, padding=1))
            for i in range(layers))
        self.out = nn.Conv2d(8 + layers * growth, 5, 1)

    def forward(self, x):
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        return self.out(torch.cat(feats, 1))


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.b1 = cbr(16, 8, 1)
        self.b2 = nn.Sequential(cbr(16, 6, 1), cbr(6, 10, 3))
        self.b3 = nn.Sequential(cbr(16, 4, 1), cbr(4, 6, 5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(16, 6, 1))
        self.out = nn.Conv2d(30, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.out(torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1))


class SplitSlice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, 24)
        self.c1, self.c2, self.c3 = nn.Conv2d(8, 6, 1), nn.Conv2d(10, 6, 1), nn.Conv2d(12, 6, 1)
        self.out = nn.Conv2d(18, 4, 1)

    def forward(self, x):
        x = self.a(x)
        p, q = torch.split(x, [8, 16], dim=1)
        r, s = q.chunk(2, 1)
        u = x[:, 12:]
        return self.out(torch.cat([self.c1(p) + self.c1(r), self.c2(torch.cat([s[:, :2], r], 1)), self.c3(u)], 1))


class FlattenHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 12)
        self.fc1 = nn.Linear(12 * 4 * 4, 20)
        self.fc2 = nn.Linear(20 * 1, 10)
        self.fc3 = nn.Linear(10, 3)

    def forward(self, x):
        x = F.max_pool2d(self.b(F.max_pool2d(self.a(x), 2)), 2)
        x = F.relu(self.fc1(x.view(x.size(0), -1)))
        x = self.fc2(x.reshape(2, 20))
        return self.fc3(torch.flatten(x.view(2, 10, 1), 1))


class ChannelsLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.gamma = nn.Parameter(torch.rand(16, 1, 1) + 0.5)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.a(x)
        y = x.permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(y)))
        y = y.transpose(1, 3).transpose(2, 3)
        return self.out(x + self.gamma * y)


class ChannelShuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.branch = nn.Sequential(cbr(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), cbr(8, 8, 1))
        self.branch2 = nn.Sequential(cbr(8, 8, 1), cbr(8, 8, 1))
        self.out = nn.Conv2d(16, 4, 1)

    @staticmethod
    def shuffle(x, groups):
        b, c, h, w = x.size()
        x = x.view(b, groups, c // groups, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(b, -1, h, w)

    def forward(self, x):
        x = self.a(x)
        for branch in (self.branch, self.branch2):
            x1, x2 = x.chunk(2, dim=1)
            x = self.shuffle(torch.cat((x1, branch(x2)), dim=1), 2)
        return self.out(x)


class UpDown(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = cbr(3, 16)
        self.up = nn.ConvTranspose2d(16, 12, 2, stride=2)
        self.gn = nn.GroupNorm(4, 12)
        self.b = nn.Conv2d(12, 8, 3, stride=2, padding=1)
        self.ups = nn.Upsample(scale_factor=2, mode="nearest")
        self.out = nn.Conv2d(8 + 16, 4, 1)

    def forward(self, x):
        s = self.a(x)
        y = self.b(F.relu(self.gn(self.up(s))))
        y = F.interpolate(self.ups(F.pad(y, (1, 1, 1, 1))), size=(16, 16), mode="bilinear", align_corners=False)
        return self.out(torch.cat([y, s], 1))


class Embeddings(nn.Module):
    shape = (2, 3, 16, 16)

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 16, 16) * 0.1)
        self.fc1, self.fc2 = nn.Linear(16, 24), nn.Linear(24, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.pos
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))


class LayerNormBlock(nn.Module):
    """Normalises over the pruned dim: pruning is valid but not output-exact (shape-only test)."""

    shape = (2, 5, 16)

    def __init__(self):
        super().__init__()
        self.fc0 = nn.Linear(16, 24)
        self.ln = nn.LayerNorm(24)
        self.fc1, self.fc2 = nn.Linear(24, 48), nn.Linear(48, 24)
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        x = self.fc0(x)
        x = x + self.fc2(F.gelu(self.fc1(self.ln(x))))
        return self.head(torch.softmax(x, -1))


class MHABlock(nn.Module):
    """nn.MultiheadAttention in a residual block (no LayerNorm, so pruning is output-exact)."""

    shape = (2, 7, 16)

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 24)
        self.attn = nn.MultiheadAttention(24, 4, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(24, 40), nn.Linear(40, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x[:, 0])


class PlainAttention(nn.Module):
    """Attention written with matmul/softmax (qkv in one Linear) and with F.scaled_dot_product_attention."""

    shape = (2, 9, 16)

    def __init__(self, heads=4, head_dim=6):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.embed = nn.Linear(16, 20)
        self.qkv = nn.Linear(20, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, 20)
        self.q2, self.k2, self.v2 = (nn.Linear(20, heads * head_dim) for _ in range(3))
        self.proj2 = nn.Linear(heads * head_dim, 20)
        self.scale = head_dim ** -0.5
        self.head = nn.Linear(20, 3)

    def forward(self, x):
        x = self.embed(x)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim))
        q = self.q2(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k2(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v2(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        return self.head(x + self.proj2(y))


class TimmAttention(nn.Module):
    """timm-style attention: head_dim and the merged width are computed from the (pruned) residual width."""

    shape = (2, 9, 16)

    def __init__(self, dim=24, heads=4):
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(16, dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.head(x + self.proj(y))


EXACT = [ConvChain, Conv1dChain, GroupedConv, Depthwise, TokenMLP, Activations, Pooling, Residual, SqueezeExcite,
         DenseBlock, Inception, SplitSlice, FlattenHead, ChannelsLast, ChannelShuffle, UpDown, Embeddings, MHABlock,
         PlainAttention, TimmAttention]
SHAPE_ONLY = [LayerNormBlock]


def example_input(cls):
    return torch.randn(getattr(cls, "shape", (2, 3, 16, 16)))
