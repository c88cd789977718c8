"""Every spelling reaches the same rule: each building block written with module calls, functional calls and
Tensor methods prunes to the same kept counts (and params/MACs) as its module spelling, under both frontends,
and passes the exactness check (graphprune.verify).

Blocks whose groups pass a LayerNorm over channels are valid but not exact there: their exactness is checked
with that group kept (`ignore`). Where no spelling can prune a group (weight standardisation reduces over the
input channels; GRN divides by a mean over channels), the test asserts that every spelling freezes it.
Input 2x3x8x8 (tokens: 2x6x6).
"""
import enum
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune.groups import Role
from graphprune.verify import max_exactness_error
from conftest import randomize_norms



class Spelling(enum.Enum):
    MODULE = "module"
    FUNCTIONAL = "functional"
    METHOD = "method"


# -- layers that own parameters and call the functional form, as library layers do ------------------------


class FConv(nn.Conv2d):
    """A conv layer whose forward calls F.conv2d with its own parameters."""

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class FLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's norm+act layer: F.batch_norm with the module's running stats, then the activation."""

    def __init__(self, channels, act=nn.ReLU):
        super().__init__(channels)
        self.act = act()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                         self.momentum, self.eps)
        return self.act(x)


class MethodBatchNorm(nn.BatchNorm2d):
    """Eval-mode batch norm by hand with Tensor methods and (1, C, 1, 1) views of the parameters."""

    def forward(self, x):
        scale = self.weight.div(self.running_var.add(self.eps).sqrt())
        return x.sub(self.running_mean.view(1, -1, 1, 1)).mul(scale.view(1, -1, 1, 1)).add(self.bias.view(1, -1, 1, 1))


def conv(spelling, cin, cout, k=1, groups=1, bias=False):
    cls = FConv if spelling is Spelling.FUNCTIONAL else nn.Conv2d
    return cls(cin, cout, k, padding=k // 2, groups=groups, bias=bias)


def linear(spelling, cin, cout):
    return (FLinear if spelling is Spelling.FUNCTIONAL else nn.Linear)(cin, cout)


def norm_act(spelling, c, act=nn.ReLU):
    """BN + activation: nn.BatchNorm2d + act module | F.batch_norm inside the norm layer | Tensor methods."""
    if spelling is Spelling.MODULE:
        return nn.Sequential(nn.BatchNorm2d(c), act())
    if spelling is Spelling.FUNCTIONAL:
        return BatchNormAct2d(c, act)
    return nn.Sequential(MethodBatchNorm(c), MethodAct(act))


class MethodAct(nn.Module):
    """relu / relu6 / hardsigmoid / sigmoid / identity written with Tensor methods."""

    def __init__(self, act):
        super().__init__()
        self.kind = act

    def forward(self, x):
        if self.kind is nn.ReLU:
            return x.relu()
        if self.kind is nn.ReLU6:
            return x.clamp(0.0, 6.0)
        if self.kind is nn.Hardsigmoid:
            return x.add(3.0).clamp(0.0, 6.0).div(6.0)
        if self.kind is nn.Sigmoid:
            return x.sigmoid()
        return x


def act(spelling, kind):
    if spelling is Spelling.MODULE:
        return kind()
    if spelling is Spelling.FUNCTIONAL:
        return FunctionalAct(kind)
    return MethodAct(kind)


class FunctionalAct(nn.Module):
    FUNCTIONS = {nn.ReLU: F.relu, nn.ReLU6: F.relu6, nn.Hardsigmoid: F.hardsigmoid, nn.Sigmoid: torch.sigmoid,
                 nn.GELU: F.gelu}

    def __init__(self, kind):
        super().__init__()
        self.fn = self.FUNCTIONS[kind]

    def forward(self, x):
        return self.fn(x)


def add(spelling, a, b):
    return a + b if spelling is Spelling.MODULE else torch.add(a, b) if spelling is Spelling.FUNCTIONAL else a.add(b)


def mul(spelling, a, b):
    return a * b if spelling is Spelling.MODULE else torch.mul(a, b) if spelling is Spelling.FUNCTIONAL else a.mul(b)


class Head(nn.Module):
    """Global pool + linear classifier, in the block's spelling."""

    def __init__(self, spelling, c, classes=5):
        super().__init__()
        self.spelling, self.pool, self.fc = spelling, nn.AdaptiveAvgPool2d(1), linear(spelling, c, classes)

    def forward(self, x):
        if self.spelling is Spelling.MODULE:
            return self.fc(torch.flatten(self.pool(x), 1))
        if self.spelling is Spelling.FUNCTIONAL:
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return self.fc(x.mean((2, 3)))


def drop_path(x, p: float, training: bool):
    """Stochastic depth, as torchvision's `stochastic_depth(input, p, mode, training)`: the identity in eval mode."""
    if not training or p == 0.0:
        return x
    keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= p
    return x * keep / (1 - p)


class DropPath(nn.Module):
    """timm's DropPath module: calls the function with its own training flag."""

    def __init__(self, p=0.1):
        super().__init__()
        self.p = p

    def forward(self, x):
        return drop_path(x, self.p, self.training)


# -- the blocks --------------------------------------------------------------------------------------------
# -- the blocks ----------------------------------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self, s: Spelling):
        super().__init__()
        self.s = s
        self.stem = nn.Sequential(conv(s, 3, 16, 3), norm_act(s, 16))
        self.a = nn.Sequential(conv(s, 16, 8, 3), norm_act(s, 8))
        self.b = nn.Sequential(conv(s, 8, 16, 3), norm_act(s, 16, nn.Identity))
        self.head = Head(s, 16)

    def forward(self, x):
        x = self.stem(x)
        return self.head(add(self.s, x, self.b(self.a(x))))


class InvertedResidualSE(nn.Module):
    def __init__(self, s: Spelling):
        super().__init__()
        self.s = s
        self.stem = nn.Sequential(conv(s, 3, 16, 3), norm_act(s, 16))
        self.expand = nn.Sequential(conv(s, 16, 32), norm_act(s, 32, nn.ReLU6))
        self.dw = nn.Sequential(conv(s, 32, 32, 3, groups=32), norm_act(s, 32, nn.ReLU6))
        self.se_reduce, self.se_expand = conv(s, 32, 8, bias=True), conv(s, 8, 32, bias=True)
        self.se_act, self.se_gate = act(s, nn.ReLU), act(s, nn.Hardsigmoid)
        self.project = nn.Sequential(conv(s, 32, 16), norm_act(s, 16, nn.Identity))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = Head(s, 16)

    def squeeze(self, x):
        if self.s is Spelling.MODULE:
            return self.pool(x)
        return F.adaptive_avg_pool2d(x, 1) if self.s is Spelling.FUNCTIONAL else x.mean((2, 3), keepdim=True)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(self.expand(x))
        y = mul(self.s, y, self.se_gate(self.se_expand(self.se_act(self.se_reduce(self.squeeze(y))))))
        return self.head(add(self.s, x, self.project(y)))


class DenseConcat(nn.Module):
    CAT = {Spelling.MODULE: torch.cat, Spelling.FUNCTIONAL: torch.concat, Spelling.METHOD: torch.concatenate}

    def __init__(self, s: Spelling, growth=6):
        super().__init__()
        self.cat = self.CAT[s]
        self.stem = conv(s, 3, 12, 3)
        self.layers = nn.ModuleList(nn.Sequential(norm_act(s, 12 + i * growth), conv(s, 12 + i * growth, growth, 3))
                                    for i in range(2))
        self.transition = nn.Sequential(norm_act(s, 12 + 2 * growth), conv(s, 12 + 2 * growth, 10))
        self.head = Head(s, 10)

    def forward(self, x):
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(self.cat(feats, 1)))
        return self.head(self.transition(self.cat(feats, 1)))


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: a LayerNorm over channels of an NCHW tensor, by permuting to NHWC and back."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """dw 7x7 -> NHWC -> LayerNorm -> Linear 4x -> GELU -> Linear -> layer scale (C,) -> NCHW -> drop path + x."""

    def __init__(self, s: Spelling, c=16):
        super().__init__()
        self.s = s
        self.stem = conv(s, 3, c, 3)
        self.dw = conv(s, c, c, 7, groups=c, bias=True)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.act, self.fc2 = linear(s, c, 4 * c), act(s, nn.GELU) if s is not Spelling.METHOD else nn.GELU(), linear(s, 4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.drop = DropPath(0.1)
        self.head = Head(s, c)

    def forward(self, x):
        x = self.stem(x)
        if self.s is Spelling.MODULE:
            y = self.dw(x).permute(0, 2, 3, 1)
            y = self.fc2(self.act(self.fc1(self.norm(y)))) * self.gamma
            y = self.drop(y.permute(0, 3, 1, 2))
        elif self.s is Spelling.FUNCTIONAL:
            y = torch.permute(self.dw(x), (0, 2, 3, 1))
            y = F.layer_norm(y, (y.shape[-1],), self.norm.weight, self.norm.bias, self.norm.eps)
            y = torch.mul(self.fc2(self.act(self.fc1(y))), self.gamma)
            y = drop_path(torch.permute(y, (0, 3, 1, 2)), 0.1, self.training)
        else:
            y = self.dw(x).permute(0, 2, 3, 1)
            y = self.fc2(self.act(self.fc1(self.norm(y)))).mul(self.gamma)
            y = y.permute(0, 3, 1, 2)
            y = y if not self.training else y.div(0.9).mul(torch.rand(y.shape[0], 1, 1, 1) >= 0.1)
        return self.head(add(self.s, x, y))


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with a residual and an optional mask (forward(x, mask=None))."""

    def __init__(self, s: Spelling, dim=16, heads=4):
        super().__init__()
        self.s, self.heads = s, heads
        self.embed = linear(s, 6, dim)
        self.qkv, self.proj = linear(s, dim, 3 * dim), linear(s, dim, dim)
        self.scale = (dim // heads) ** -0.5
        self.softmax = nn.Softmax(-1)
        self.head = linear(s, dim, 5)

    def forward(self, x, mask=None):
        x = self.embed(x)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.s is Spelling.FUNCTIONAL:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        else:
            if self.s is Spelling.MODULE:
                attn = (q @ k.transpose(-2, -1)) * self.scale
            else:
                attn = q.matmul(k.transpose(-2, -1)).mul(self.scale)
            if mask is not None:
                attn = attn + mask
            attn = self.softmax(attn) if self.s is Spelling.MODULE else attn.softmax(-1)
            y = attn @ v if self.s is Spelling.MODULE else attn.matmul(v)
        y = self.proj(y.transpose(1, 2).reshape(b, n, c))
        return self.head(add(self.s, x, y).mean(1))


class NormAct(nn.Module):
    """conv -> norm+act (nn.BatchNorm2d + ReLU | BatchNormAct2d calling F.batch_norm | Tensor methods) -> conv."""

    def __init__(self, s: Spelling):
        super().__init__()
        self.body = nn.Sequential(conv(s, 3, 16, 3), norm_act(s, 16), conv(s, 16, 24, 3), norm_act(s, 24))
        self.head = Head(s, 24)

    def forward(self, x):
        return self.head(self.body(x))


class StdConv2d(nn.Conv2d):
    """timm's StdConv2d: the weight standardised per output channel with F.batch_norm on a (1, O, I*k*k) view."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0,
                         eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledStdConv2d(nn.Conv2d):
    """timm's ScaledStdConv2d: standardised with F.batch_norm whose affine weight is a per-output-channel gain."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, weight=self.gain.view(-1),
                         training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class MethodStdConv2d(nn.Conv2d):
    """(w - mean) / std computed in forward with Tensor methods, times a per-output-channel gain."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):
        w = self.weight
        w = w.sub(w.mean((1, 2, 3), keepdim=True)).div(w.var((1, 2, 3), keepdim=True, unbiased=False).add(1e-6).sqrt())
        return F.conv2d(x, w.mul(self.gain), self.bias, self.stride, self.padding, self.dilation, self.groups)


class WeightStandardised(nn.Module):
    """conv -> BN-ReLU -> weight-standardised conv -> BN-ReLU -> conv. Spellings: F.batch_norm on the weight,
    the same with a gain (as F.batch_norm's weight), and by hand with Tensor methods and a gain."""

    STD = {Spelling.MODULE: StdConv2d, Spelling.FUNCTIONAL: ScaledStdConv2d, Spelling.METHOD: MethodStdConv2d}

    def __init__(self, s: Spelling):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.std = self.STD[s](16, 24, 3, padding=1)
        self.b = nn.Sequential(nn.BatchNorm2d(24), nn.ReLU(), nn.Conv2d(24, 12, 1), nn.ReLU())
        self.head = Head(Spelling.MODULE, 12)

    def forward(self, x):
        return self.head(self.b(self.std(self.a(x))))


class GRN(nn.Module):
    """ConvNeXt-V2 global response normalisation on NHWC: the L2 norm over (H, W), divided by its channel mean."""

    def __init__(self, s: Spelling, c):
        super().__init__()
        self.s = s
        self.gamma, self.beta = nn.Parameter(torch.rand(1, 1, 1, c)), nn.Parameter(torch.randn(1, 1, 1, c) * 0.1)

    def forward(self, x):
        if self.s is Spelling.MODULE:
            g = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        elif self.s is Spelling.FUNCTIONAL:
            g = torch.linalg.vector_norm(x, 2, dim=(1, 2), keepdim=True)
        else:
            g = x.norm(p=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * n) + self.beta + x


class GRNBlock(nn.Module):
    def __init__(self, s: Spelling, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.fc1, self.grn, self.fc2 = nn.Linear(c, 2 * c), GRN(s, 2 * c), nn.Linear(2 * c, c)
        self.head = Head(Spelling.MODULE, c)

    def forward(self, x):
        x = self.stem(x)
        y = self.fc2(self.grn(F.gelu(self.fc1(x.permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return self.head(x + y)


class LayerNorm2dBlock(nn.Module):
    """conv -> LayerNorm over channels of NCHW (timm LayerNorm2d | F.layer_norm on a permuted view | nn.LayerNorm
    between Tensor.permute calls) -> conv."""

    def __init__(self, s: Spelling):
        super().__init__()
        self.s = s
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.norm = LayerNorm2d(16) if s is Spelling.MODULE else nn.LayerNorm(16)
        self.head = Head(Spelling.MODULE, 8)

    def forward(self, x):
        x = self.a(x)
        if self.s is Spelling.MODULE:
            x = self.norm(x)
        elif self.s is Spelling.FUNCTIONAL:
            x = torch.permute(F.layer_norm(torch.permute(x, (0, 2, 3, 1)), (16,), self.norm.weight, self.norm.bias),
                              (0, 3, 1, 2))
        else:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(self.b(x).relu())


class ChannelAffine(nn.Module):
    """Per-channel affine parameters on tokens: (1, 1, C) scale and shift, and a (C,) layer scale."""

    def __init__(self, s: Spelling, c=16):
        super().__init__()
        self.s = s
        self.fc1, self.fc2 = nn.Linear(6, c), nn.Linear(c, 5)
        self.alpha, self.beta = nn.Parameter(torch.rand(1, 1, c) + 0.5), nn.Parameter(torch.randn(1, 1, c))
        self.ls = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        y = self.fc1(x)
        if self.s is Spelling.MODULE:
            y = (y * self.alpha + self.beta) * self.ls
        elif self.s is Spelling.FUNCTIONAL:
            y = torch.mul(torch.addcmul(self.beta, y, self.alpha), self.ls)
        else:
            y = y.mul(self.alpha).add(self.beta).mul(self.ls)
        return self.fc2(F.relu(y)).mean(1)


class StochasticDepth(nn.Module):
    """Residual branches behind drop path: a DropPath module | torchvision's stochastic_depth function |
    nn.Dropout of the branch (all the identity in eval mode)."""

    def __init__(self, s: Spelling):
        super().__init__()
        self.s = s
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1))
        self.drop = DropPath(0.2) if s is Spelling.MODULE else nn.Dropout(0.2)
        self.head = Head(Spelling.MODULE, 16)

    def forward(self, x):
        x = self.stem(x)
        y = self.branch(x)
        y = drop_path(y, 0.2, self.training) if self.s is Spelling.FUNCTIONAL else self.drop(y)
        return self.head(x + y)


class Shifted(nn.Module):
    """Shifted windows and spatial padding: torch.roll / Tensor.roll over (H, W), F.pad of W, channels untouched."""

    def __init__(self, s: Spelling):
        super().__init__()
        self.s = s
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3)
        self.head = Head(Spelling.MODULE, 8)

    def forward(self, x):
        x = self.a(x)
        if self.s is Spelling.METHOD:
            x = x.roll((1, -1), (2, 3)).relu()
        else:
            x = F.relu(torch.roll(x, shifts=(1, -1), dims=(-2, -1)))
        return self.head(self.b(F.pad(x, (1, 1, 1, 1))))


# -- the test ------------------------------------------------------------------------------------------------

TOKENS = (Attention, ChannelAffine)
# module whose group passes a statistic over the channels (LayerNorm; GRN's channel mean, a normalising statistic:
# rules/statistics.py), so it is pruned valid but not exact
LN_KEPT = {ConvNeXt: ("stem",), LayerNorm2dBlock: ("a",), GRNBlock: ("fc1",)}
FROZEN = {WeightStandardised: ("a.0.weight", "b.0.weight")}  # groups no spelling prunes
BLOCKS = (Residual, InvertedResidualSE, DenseConcat, ConvNeXt, Attention, NormAct, WeightStandardised, GRNBlock,
          LayerNorm2dBlock, ChannelAffine, StochasticDepth, Shifted)


def _model_and_input(block, spelling):
    torch.manual_seed(0)
    model = randomize_norms(block(spelling)).eval()
    x = torch.randn(2, 6, 6) if block in TOKENS else torch.randn(2, 3, 8, 8)
    return model, x


def _prune(block, spelling, frontend, ignore=()):
    model, x = _model_and_input(block, spelling)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend=frontend, ignore=ignore)
    return model, x, result


def signature(result):
    """Per-group (size, kept) counts, the measured parameters removed and the MACs after pruning.

    (Parameters removed, not after: a spelling may hold a parameter the module spelling has not, such as the
    gain of a weight-standardised conv, in a group no spelling prunes.)"""
    kept = sorted((result.plan.sizes[g], len(k)) for g, k in result.plan.keep.items())
    return kept, result.report.params_before - result.report.params_after, result.report.macs_after


@functools.lru_cache(maxsize=None)
def reference(block):
    """The module spelling, traced with fx."""
    return signature(_prune(block, Spelling.MODULE, "fx")[2])


def _cases():
    for block in BLOCKS:
        for spelling in Spelling:
            for frontend in ("fx", "export"):
                marks = []
                if frontend == "export" and spelling is not Spelling.MODULE:
                    marks.append(pytest.mark.slow)  # torch.export costs 1-3 s per model: one export case per block
                yield pytest.param(block, spelling, frontend, marks=marks,
                                   id=f"{block.__name__}-{spelling.value}-{frontend}")


@pytest.mark.parametrize("block,spelling,frontend", list(_cases()))
def test_every_spelling_prunes_like_the_module_spelling(block, spelling, frontend):
    model, x, result = _prune(block, spelling, frontend)
    assert result.report.frontend == frontend
    assert result.plan.keep and result.report.params_after < result.report.params_before
    assert signature(result) == reference(block)
    if block in FROZEN:  # the same counts because every spelling freezes these groups
        for weight in FROZEN[block]:
            group = next(g for g in result.graph.groups
                         if any(s.name == weight and s.role is Role.PRODUCER for s in g.members))
            assert group.frozen, f"{weight}'s group should be frozen"
    if block in LN_KEPT:  # exact once the group normalised over channels is kept
        assert result.report.renormalised  # the report says which statistic is no longer exact
        model, x, result = _prune(block, spelling, frontend, ignore=LN_KEPT[block])
        assert result.plan.keep
    assert max_exactness_error(model, (x,), result) <= 1e-5
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape


def test_optional_mask_is_left_at_its_default_under_fx():
    """forward(x, mask=None) traced by fx takes the branch the model runs when mask is left out (a Proxy
    would take `mask is not None`), and the masked branch when an example mask is given."""
    model, x = _model_and_input(Attention, Spelling.MODULE)
    mask = torch.randn(2, 4, 6, 6)
    without = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="fx")
    given = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="fx", example_kwargs={"mask": mask})
    assert without.plan.keep and given.plan.keep
    assert max_exactness_error(model, (x,), without) <= 1e-5
    assert max_exactness_error(model, (x, mask), given) <= 1e-5
    with torch.no_grad():
        assert not torch.allclose(given.model(x, mask), given.model(x, torch.zeros_like(mask)))  # the mask is used


def test_roll_along_the_channel_dim_freezes():
    class RollChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(torch.roll(self.a(x), 1, 1))

    model, x = RollChannels().eval(), torch.randn(1, 3, 4, 4)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="fx")
    reasons = [r for g in result.report.frozen_groups for r in g.frozen_reasons]
    assert any("shifts the channel dim" in r for r in reasons), reasons
    assert not result.plan.keep


def test_matmul_attention_with_batch_merged_into_heads_prunes_whole_heads_under_export():
    """Regression: with batch 2, export merges batch and heads before bmm; the head_dim (contracted by q @ k^T)
    was once taken as the channel dim and pruned, changing every attention score. Heads are pruned whole, as fx
    does, and the model is exact."""
    model, x = _model_and_input(Attention, Spelling.MODULE)
    exported = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="export")
    traced = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="fx")
    assert sorted(exported.plan.keep.values()) == sorted(traced.plan.keep.values())
    assert max_exactness_error(model, (x,), exported) <= 1e-5


def test_a_product_over_the_channels_of_two_activations_freezes_them():
    """q @ k^T with the features as channels: dropping some would change every product, so they freeze."""
    class Gram(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(5, 3)

        def forward(self, x):
            return self.head(self.a(x) @ self.b(x).transpose(-2, -1))

    model, x = Gram().eval(), torch.randn(1, 5, 6)
    for frontend in ("fx", "export"):
        result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend=frontend)
        reasons = [r for g in result.report.frozen_groups for r in g.frozen_reasons]
        assert any("contracts the channel dim of two activations" in r for r in reasons), (frontend, reasons)
        assert not result.plan.keep


class RepeatInterleaved(nn.Module):
    """Each channel's positions along `dim` repeated twice (dim 1: the channels themselves, so `b` reads 32)."""

    def __init__(self, dim: int, method: bool):
        super().__init__()
        self.dim, self.method = dim, method
        self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(32 if dim == 1 else 16, 4, 1)

    def forward(self, x):
        h = self.a(x)
        return self.b(h.repeat_interleave(2, dim=self.dim) if self.method else torch.repeat_interleave(h, 2, self.dim))


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("method", [False, True])
@pytest.mark.parametrize("dim", [0, 1, 3])
def test_repeat_interleave_carries_the_channels_it_repeats(dim, method, frontend):
    model, x = RepeatInterleaved(dim, method).eval(), torch.randn(2, 3, 4, 4)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend=frontend, strict=True)
    (kept,) = [k for gid, k in result.plan.keep.items() if result.graph.group(gid).size == 16]
    k = torch.as_tensor(kept)
    columns = torch.stack([2 * k, 2 * k + 1], 1).flatten() if dim == 1 else k  # b's inputs that repeat channel k
    with torch.no_grad():
        reference = F.conv2d(model.a(x)[:, k].repeat_interleave(2, dim), model.b.weight[:, columns], model.b.bias)
        torch.testing.assert_close(result.model(x), reference, rtol=1e-5, atol=1e-5)
        if frontend == "fx":
            torch.testing.assert_close(result.module(x), reference, rtol=1e-5, atol=1e-5)
    assert len(k) == 8


def test_repeat_interleave_by_a_tensor_of_counts_freezes_naming_it():
    class Uneven(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(10, 2, 1)

        def forward(self, x):
            return self.b(self.a(x).repeat_interleave(torch.tensor([1, 2, 3, 4]), dim=1))

    result = graphprune.prune_graph(Uneven().eval(), torch.randn(1, 3, 4, 4), ratio=0.5, target="none", frontend="fx")
    reasons = [r for g in result.report.frozen_groups for r in g.frozen_reasons]
    assert any("repeats by a tensor of counts" in r for r in reasons), reasons
    assert not result.plan.keep
