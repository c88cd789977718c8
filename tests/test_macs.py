"""The MAC counter against hand-computed values."""
import torch
import torch.nn as nn

from graphprune.cost import count_macs
from graphprune.rules import default_rules
from graphprune.trace import record_values, trace


def macs_of(model, *inputs):
    gm = trace(model, default_rules().has_module_rule)
    record_values(gm, inputs)
    return count_macs(gm, default_rules())


def test_conv_module_and_functional():
    # output 8 x 10 x 10 positions, each a 3-channel 3x3 dot product
    expected = (8 * 10 * 10) * (3 * 3 * 3)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert macs_of(nn.Sequential(conv), torch.randn(1, 3, 10, 10)) == expected  # call_module
    assert macs_of(conv, torch.randn(1, 3, 10, 10)) == expected  # traced into F.conv2d


def test_strided_grouped_conv_with_batch():
    # batch 2, output 16 x 5 x 5, groups 4: each output reads 8/4 = 2 channels x 3x3
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)
    assert macs_of(conv, torch.randn(2, 8, 10, 10)) == 2 * (16 * 5 * 5) * (2 * 3 * 3)


def test_depthwise_conv():
    # each of 8 x 10 x 10 outputs reads one channel's 3x3 window
    assert macs_of(nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.randn(1, 8, 10, 10)) == (8 * 10 * 10) * 9


def test_linear_on_tokens():
    # 2 x 7 tokens, 4 outputs each, 10 inputs per output
    assert macs_of(nn.Linear(10, 4), torch.randn(2, 7, 10)) == (2 * 7 * 4) * 10


class MatMul(nn.Module):
    def forward(self, a, b):
        return torch.matmul(a, b) + (a @ b)


def test_matmul():
    # two (2, 3, 4) @ (2, 4, 5) products: 2*3*5 outputs, 4 terms each
    assert macs_of(MatMul(), torch.randn(2, 3, 4), torch.randn(2, 4, 5)) == 2 * (2 * 3 * 5) * 4


def test_elementwise_ops_cost_nothing():
    assert macs_of(nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2)), torch.randn(1, 3, 8, 8)) == 0


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def test_multihead_attention():
    # batch 3, 5 tokens, width 8: q/k/v projections 3*(5*8*8), scores 5*5*8, weighted sum 5*5*8, out proj 5*8*8
    per_sample = 3 * (5 * 8 * 8) + 2 * (5 * 5 * 8) + 5 * 8 * 8
    assert macs_of(Attention(), torch.randn(3, 5, 8)) == 3 * per_sample


class SDPA(nn.Module):
    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_scaled_dot_product_attention():
    # batch 2, 3 heads, 5 queries, 7 keys, head_dim 4: scores 5*7*4 and weighted sum 5*7*4 per head
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    assert macs_of(SDPA(), q, k, v) == 2 * 3 * (2 * 5 * 7 * 4)
