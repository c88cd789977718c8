"""Property test: random small architectures built from the supported ops always prune to a working,
shape-preserving, output-exact model."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphprune
from graphprune.verify import max_exactness_error
from conftest import RandomScores, randomize_norms

ACTS = [nn.ReLU, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Identity]


class Conv(nn.Module):
    def __init__(self, cin, cout, act, k=3, groups=1):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups), nn.BatchNorm2d(cout), act()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Res(nn.Module):
    def __init__(self, c, mid, act):
        super().__init__()
        self.a, self.b = Conv(c, mid, act), nn.Conv2d(mid, c, 1)

    def forward(self, x):
        return x + self.b(self.a(x))


class SE(nn.Module):
    def __init__(self, c, mid, act):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, mid, 1), nn.Conv2d(mid, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class Cat(nn.Module):
    def __init__(self, c, a, b, act):
        super().__init__()
        self.p, self.q = Conv(c, a, act, 1), Conv(c, b, act, 3)

    def forward(self, x):
        return torch.cat([self.p(x), x, self.q(x)], 1)


class SplitShuffle(nn.Module):
    def __init__(self, c, act):
        super().__init__()
        self.branch = nn.Sequential(Conv(c // 2, c // 2, act, 1), Conv(c // 2, c // 2, nn.Identity, 3, groups=c // 2))

    def forward(self, x):
        a, b = x.chunk(2, 1)
        y = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class ChannelsLastMLP(nn.Module):
    def __init__(self, c, mid):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, mid), nn.Linear(mid, c)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)


@st.composite
def architectures(draw):
    widths = st.sampled_from([4, 6, 8, 12])
    c = draw(widths)
    act = draw(st.sampled_from(ACTS))
    layers, size = [Conv(3, c, act)], 16
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "dw", "group", "res", "se", "cat", "shuffle", "pool", "mlp"]))
        act = draw(st.sampled_from(ACTS))
        if kind == "conv":
            out = draw(widths)
            layers.append(Conv(c, out, act))
            c = out
        elif kind == "dw":
            layers.append(Conv(c, c, act, 3, groups=c))
        elif kind == "group":
            out = 2 * draw(widths)
            layers.append(Conv(c, out, act, 3, groups=2))
            c = out
        elif kind == "res":
            layers.append(Res(c, draw(widths), act))
        elif kind == "se":
            layers.append(SE(c, draw(widths), act))
        elif kind == "cat":
            a, b = draw(widths), draw(widths)
            layers.append(Cat(c, a, b, act))
            c += a + b
        elif kind == "shuffle":
            layers.append(SplitShuffle(c, act))
        elif kind == "pool" and size >= 8:
            layers.append(draw(st.sampled_from([nn.MaxPool2d(2), nn.AvgPool2d(2)])))
            size //= 2
        elif kind == "mlp":
            layers.append(ChannelsLastMLP(c, draw(widths)))
    flatten_head = draw(st.booleans())
    head = nn.Sequential(nn.Flatten(), nn.Linear(c * size * size, 5)) if flatten_head else \
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 5))
    return nn.Sequential(*layers, head)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=architectures(), ratio=st.floats(0.05, 0.9), seed=st.integers(0, 1000))
def test_random_architectures_prune_exactly(model, ratio, seed):
    model = randomize_norms(model).eval()
    x = torch.randn(2, 3, 16, 16)
    result = graphprune.prune_graph(model, x, ratio=ratio, importance=RandomScores(seed))
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape
    r = result.report
    assert r.params_after == sum(p.numel() for p in result.model.parameters())
    assert r.params_before - r.params_after == sum(g.params_removed for g in r.groups) + r.params_removed_dead_code
    assert max_exactness_error(model, (x,), result) <= 1e-5
