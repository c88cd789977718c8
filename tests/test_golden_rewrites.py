"""Golden before/after tests for the rewrite halves of the data-movement rules.

Each case is a small module, pruned with a fixed plan (scores rise with the channel
index, so the highest-indexed channels are kept; ratio 0.5, no rounding). The expected
text is the rewritten forward's code and the parameter shapes, written out by hand from
the rule's contract and compared exactly (in the style of TVM's before/expected tests).
"""
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphprune


def highest_index_first(group, model):
    return np.arange(group.size, dtype=float)


def rewritten(cls):
    torch.manual_seed(0)
    model = cls().eval()
    result = graphprune.prune_graph(model, cls.example(), ratio=0.5, importance=highest_index_first, target="none")
    code = "\n".join(line for line in result.model.code.strip().splitlines() if line.strip())
    shapes = {name: tuple(p.shape) for name, p in result.model.named_parameters()}
    with torch.no_grad():  # the rewritten model runs and keeps the output shape
        assert result.model(cls.example()).shape == model(cls.example()).shape
    return textwrap.dedent(code), shapes


class ViewToLinear(nn.Module):
    """view(1, C*H*W): the literal size follows the kept channels (8 -> 4 channels of 2x2 = 16)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(32, 5)

    @staticmethod
    def example():
        return torch.randn(1, 3, 2, 2)

    def forward(self, x):
        return self.fc(self.conv(x).view(1, 32))


class SplitParts(nn.Module):
    """split([3, 5]): parts are re-cut to the kept counts of each part.

    The plan keeps channels 2, 5, 6, 7: the four highest-scored, with 4 traded for 2 so that
    `a` keeps an input (the planner's member-slot guard); so the parts keep 1 and 3. (Equal
    parts would keep equal counts: see ChunkParts.)
    """

    def __init__(self):
        super().__init__()
        self.conv, self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(5, 3, 1)

    @staticmethod
    def example():
        return torch.randn(1, 3, 4, 4)

    def forward(self, x):
        p, q = torch.split(self.conv(x), [3, 5], dim=1)
        return self.a(p) + self.b(q)


class ChunkParts(nn.Module):
    """chunk(2): becomes an explicit split by the kept counts. The caller's code splits at half the
    width, so the halves keep equal counts: 2, 3 and 6, 7, the best two of each (codesizes.py)."""

    def __init__(self):
        super().__init__()
        self.conv, self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 3, 1), nn.Conv2d(4, 3, 1)

    @staticmethod
    def example():
        return torch.randn(1, 3, 4, 4)

    def forward(self, x):
        p, q = self.conv(x).chunk(2, dim=1)
        return self.a(p) + self.b(q)


class SliceChannels(nn.Module):
    """x[:, 2:6]: the bounds count the kept channels below each bound (kept 4..7: the slice keeps 4, 5 as 0:2)."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 3, 1)

    @staticmethod
    def example():
        return torch.randn(1, 3, 4, 4)

    def forward(self, x):
        return self.head(self.conv(x)[:, 2:6])


class ConcatInputs(nn.Module):
    """cat([a, b]): nothing to rewrite in the graph; each writer loses half (4 -> 2, 6 -> 3), head reads 5."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(10, 3, 1)

    @staticmethod
    def example():
        return torch.randn(1, 3, 4, 4)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


EXPECTED = {
    ViewToLinear: ("""\
def forward(self, x):
    conv = self.conv(x);  x = None
    view = conv.view(1, 16);  conv = None
    fc = self.fc(view);  view = None
    return fc""", {"conv.weight": (4, 3, 1, 1), "conv.bias": (4,), "fc.weight": (5, 16), "fc.bias": (5,)}),
    SplitParts: ("""\
def forward(self, x):
    conv = self.conv(x);  x = None
    split = torch.functional.split(conv, [1, 3], dim = 1);  conv = None
    getitem = split[0]
    getitem_1 = split[1];  split = None
    a = self.a(getitem);  getitem = None
    b = self.b(getitem_1);  getitem_1 = None
    add = a + b;  a = b = None
    return add""", {"conv.weight": (4, 3, 1, 1), "conv.bias": (4,), "a.weight": (3, 1, 1, 1), "a.bias": (3,),
                    "b.weight": (3, 3, 1, 1), "b.bias": (3,)}),
    ChunkParts: ("""\
def forward(self, x):
    conv = self.conv(x);  x = None
    chunk = torch.functional.split(conv, [2, 2], dim = 1);  conv = None
    getitem = chunk[0]
    getitem_1 = chunk[1];  chunk = None
    a = self.a(getitem);  getitem = None
    b = self.b(getitem_1);  getitem_1 = None
    add = a + b;  a = b = None
    return add""", {"conv.weight": (4, 3, 1, 1), "conv.bias": (4,), "a.weight": (3, 2, 1, 1), "a.bias": (3,),
                    "b.weight": (3, 2, 1, 1), "b.bias": (3,)}),
    SliceChannels: ("""\
def forward(self, x):
    conv = self.conv(x);  x = None
    getitem = conv[(slice(None, None, None), slice(0, 2, None))];  conv = None
    head = self.head(getitem);  getitem = None
    return head""", {"conv.weight": (4, 3, 1, 1), "conv.bias": (4,), "head.weight": (3, 2, 1, 1), "head.bias": (3,)}),
    ConcatInputs: ("""\
def forward(self, x):
    a = self.a(x)
    b = self.b(x);  x = None
    cat = torch.cat([a, b], dim = 1);  a = b = None
    head = self.head(cat);  cat = None
    return head""", {"a.weight": (2, 3, 1, 1), "a.bias": (2,), "b.weight": (3, 3, 1, 1), "b.bias": (3,),
                     "head.weight": (3, 5, 1, 1), "head.bias": (3,)}),
}
CASES = tuple(EXPECTED)


@pytest.mark.parametrize("cls", CASES, ids=lambda c: c.__name__)
def test_rewrite_matches_the_golden_graph(cls):
    code, shapes = rewritten(cls)
    expected_code, expected_shapes = EXPECTED[cls]
    assert code == expected_code
    assert shapes == expected_shapes
