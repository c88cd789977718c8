"""Unknown ops freeze what they touch (with the op named); users add rules without mutating anything global."""
import pytest
import torch
import torch.fx
import torch.nn as nn

import graphprune
from graphprune import Rule, default_rules
from graphprune.errors import RuleError, UnsupportedOpError
from graphprune.groups import Coupling, Effect, Role
from graphprune.verify import max_exactness_error
from conftest import randomize_norms


def mystery(x):
    return x.flip(1)  # reverses channels: NOT element-wise


torch.fx.wrap("mystery")


class ChannelScale(nn.Module):
    """A custom per-channel scale with no built-in rule (traced as a leaf once it has one)."""

    def __init__(self, c):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return torch.einsum("bchw,c->bchw", x, self.scale)  # einsum has no built-in rule


class ChannelScaleRule(Rule):
    def couple(self, node, ctx):
        x = node.args[0]
        out = ctx.output_slot(node, 1)
        return Effect(1, couplings=(Coupling(ctx.input_slot(x, 1), out),
                                    Coupling(out, ctx.module_param_slot(node, "scale", 0, Role.PRODUCER))))


class WithUnknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 12, 3), nn.Conv2d(12, 4, 1)
        self.bn = nn.BatchNorm2d(12)

    def forward(self, x):
        x = mystery(self.b(self.a(x)))
        return self.d(torch.relu(self.bn(self.c(x))))


def test_unknown_op_freezes_its_groups_and_prunes_the_rest():
    model = randomize_norms(WithUnknown()).eval()
    x = torch.randn(1, 3, 16, 16)
    result = graphprune.prune_graph(model, x, ratio=0.5, frontend="fx", target="none")
    frozen = {g.id: g.frozen_reasons for g in result.report.frozen_groups}
    assert any("mystery" in r and "no rule" in r for reasons in frozen.values() for r in reasons), frozen
    assert result.model.b.out_channels == 8  # feeds mystery: frozen
    assert result.model.a.out_channels == 4  # not touched by it: pruned
    assert result.model.c.out_channels == 6
    assert result.model(x).shape == model(x).shape
    assert max_exactness_error(model, (x,), result) <= 1e-5


def test_strict_raises_and_names_the_op():
    with pytest.raises(UnsupportedOpError, match="mystery.*has no rule.*with_rule"):
        graphprune.prune_graph(WithUnknown(), torch.randn(1, 3, 16, 16), ratio=0.5, strict=True)


class ScaledNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.s, self.b = nn.Conv2d(3, 16, 3, padding=1), ChannelScale(16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.s(self.a(x))))


def test_custom_module_rule():
    model = ScaledNet().eval()
    x = torch.randn(2, 3, 8, 8)
    # without a rule the module is traced through to einsum, which has no rule: the group of `a` is frozen
    plain = graphprune.prune_graph(model, x, ratio=0.5, frontend="fx")
    assert plain.model.a.out_channels == 16
    assert any("einsum" in r for g in plain.report.frozen_groups for r in g.frozen_reasons)
    rules = default_rules().with_rule(ChannelScale, ChannelScaleRule())
    result = graphprune.prune_graph(model, x, ratio=0.5, rules=rules, target="none")
    assert result.model.a.out_channels == 8
    assert result.model.get_submodule("s").scale.shape == (8,)
    assert max_exactness_error(model, (x,), result) <= 1e-5
    assert default_rules().for_module(ChannelScale(2)) is None  # the default table was not changed


def test_auto_frontend_takes_export_when_fx_meets_an_op_without_a_rule():
    """einsum has no fx rule; torch.export spells it in Core ATen ops that have rules, so auto prunes `a` too."""
    model = ScaledNet().eval()
    x = torch.randn(2, 3, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none")
    assert result.report.frontend.startswith("export (fx met 1 op(s) without a rule")
    assert result.model.get_parameter("a.weight").shape[0] == 8
    assert max_exactness_error(model, (x,), result) <= 1e-5


class ChannelBias(nn.Module):
    """A custom module whose forward reads the channel count it stores: its rule's shrink must update it."""

    def __init__(self, c):
        super().__init__()
        self.channels = c
        self.bias = nn.Parameter(torch.randn(c))

    def forward(self, x):
        return x + self.bias.view(1, self.channels, 1, 1)


class ChannelBiasRule(Rule):
    def couple(self, node, ctx):
        out = ctx.output_slot(node, 1)
        return Effect(1, couplings=(Coupling(ctx.input_slot(node.args[0], 1), out),
                                    Coupling(out, ctx.module_param_slot(node, "bias", 0, Role.PRODUCER))))


class ForgetfulBiasRule(ChannelBiasRule):
    """Broken: its shrink forgets `channels`, so the rewritten model fails at the module."""

    def shrink(self, node, ctx):
        pass  # should set ctx.module(node).channels = ctx.module(node).bias.shape[0]


class RaisingBiasRule(ChannelBiasRule):
    """Broken: its shrink raises whenever the module's channels are pruned."""

    def shrink(self, node, ctx):
        if ctx.kept(node.name, 1) is not None:
            raise ValueError("not implemented")


class BiasedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.s = nn.Conv2d(3, 16, 3, padding=1), ChannelBias(16)
        self.b, self.c = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.s(self.a(x))))))


@pytest.mark.parametrize("broken", [ForgetfulBiasRule, RaisingBiasRule])
def test_a_broken_shrink_freezes_its_group_and_strict_raises_rule_error(broken):
    """Without strict (the suite's GRAPHPRUNE_RULE_ERRORS=raise is about failing `couple` halves) the group whose
    rewrite breaks is frozen and the rest pruned; with strict=True the same rule raises RuleError."""
    model, x = BiasedNet().eval(), torch.randn(1, 3, 8, 8)
    rules = default_rules().with_rule(ChannelBias, broken())
    prune = dict(ratio=0.5, rules=rules, target="none", frontend="fx")
    result = graphprune.prune_graph(model, x, **prune)
    reasons = [r for g in result.report.frozen_groups for r in g.frozen_reasons]
    assert any("rewriting it broke the model's check" in r and "`s`" in r for r in reasons), reasons
    assert result.model.a.out_channels == 16 and result.model.b.out_channels == 8  # `s`'s group frozen, the rest pruned
    assert max_exactness_error(model, (x,), result) <= 1e-5
    names_rule_and_node = rf"rule {broken.__name__} broke the rewrite of `s` \(module `s`: ChannelBias\)"
    with pytest.raises(RuleError, match=names_rule_and_node):
        graphprune.prune_graph(model, x, strict=True, **prune)
    assert graphprune.analyse(model, x, rules=rules, strict=True).strict


def test_with_rule_rejects_non_rules():
    with pytest.raises(TypeError):
        default_rules().with_rule(ChannelScale, lambda n, c: None)


def test_channel_count_used_as_a_value_freezes_with_reason():
    from op_models import TimmAttention, example_input  # noqa: PLC0415

    model = TimmAttention().eval()
    result = graphprune.prune_graph(model, example_input(TimmAttention), ratio=0.5, target="none")
    reasons = [r for g in result.report.frozen_groups for r in g.frozen_reasons]
    assert any("channel count is read by" in r and "used as a value" in r for r in reasons), reasons
    assert result.model.qkv.out_features < model.qkv.out_features  # the heads are still pruned
    assert result.model.embed.out_features == model.embed.out_features  # the residual width whose count is read is not


class BufferTimesPositions(nn.Module):
    """A buffer's channels meet a tensor whose channels graphprune cannot follow (Llama's `inv_freq * positions`)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.register_buffer("freq", torch.arange(1.0, 9.0))

    def forward(self, x):
        positions = torch.arange(x.shape[-1], dtype=x.dtype)[:, None]  # (W, 1): no channel dim
        angles = positions * self.freq  # (W, 8)
        return self.conv(x) + angles.sum()


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_constants_that_meet_an_untracked_tensor_are_frozen(frontend):
    model = BufferTimesPositions().eval()
    x = torch.randn(1, 3, 4, 4)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend=frontend)
    reasons = [r for g in result.report.frozen_groups for r in g.frozen_reasons]
    assert any("cannot follow" in r for r in reasons), reasons
    assert result.model.get_buffer("freq").shape == (8,)
    assert torch.allclose(result.model(x), model(x), atol=1e-5)


def test_a_subclass_gets_its_base_rule_only_while_it_runs_the_base_forward():
    """for_module remembers its answers per class and forward: a subclass that overrides forward, or whose forward
    is replaced after the table answered, gets no rule of its base; given the base forward back, it has it again."""
    class Scaled(ChannelScale):
        pass

    rules = default_rules().with_rule(ChannelScale, ChannelScaleRule())
    assert isinstance(rules.for_module(Scaled(2)), ChannelScaleRule)
    Scaled.forward = lambda self, x: x * 2
    assert rules.for_module(Scaled(2)) is None
    del Scaled.forward
    assert isinstance(rules.for_module(Scaled(2)), ChannelScaleRule)
