"""A new op family is one rule in one file: it couples, shrinks, costs and resizes, under the fx frontend (the
module, a leaf once it has a rule), under torch.export (the custom op it calls) and in `result.module`.

The family here: `gptest::channel_gain(x, gain)`, y[:, c] = x[:, c] * gain[c], a custom op graphprune has no
rule for, called by a module whose forward reads its `channels` attribute (so a rebuild that forgot to resize
it fails).
"""
import math

import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune import Rule, default_rules
from graphprune.groups import Coupling, Effect, Role
from graphprune.rules.base import MacTerm
from graphprune.rules.callsite import Operand, channel_factor
from graphprune.verify import max_exactness_error


@torch.library.custom_op("gptest::channel_gain", mutates_args=())
def channel_gain(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    return x * gain.view(1, -1, *([1] * (x.dim() - 2)))


@channel_gain.register_fake
def _(x, gain):
    return torch.empty_like(x)


class ChannelGain(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.gain = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x):
        return torch.ops.gptest.channel_gain(x, self.gain.view(self.channels))


# -- the whole family: this class, nothing else ------------------------------------------------------------------
class ChannelGainRule(Rule):
    """y[:, c] = x[:, c] * gain[c]: the module (fx) and the op it calls (torch.export), read through Operand."""

    def _read(self, node, view):
        if node.op == "call_module":
            return node.args[0], Operand.of_module(node, view, "gain")
        return node.args[0], Operand(node=node.args[1])

    def couple(self, node, ctx):
        x, gain = self._read(node, ctx)
        out = ctx.output_slot(node, 1)
        return Effect(1, couplings=(Coupling(ctx.input_slot(x, 1), out), Coupling(out, gain.slot(ctx, 0, Role.PRODUCER))))

    def shrink(self, node, ctx):
        if node.op == "call_module":
            self.resize(ctx.module(node))

    def resize(self, module):
        if not isinstance(module, ChannelGain):
            return None
        module.channels = module.gain.shape[0]
        return module

    def cost(self, node, view):
        return (MacTerm(math.prod(view.shape(node)), channel_factor(view, node, 1)),)


def gain_rules():
    rule = ChannelGainRule()
    return default_rules().with_rules({ChannelGain: rule, torch.ops.gptest.channel_gain.default: rule})
# ------------------------------------------------------------------------------------------------------------------


class GainNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.gain, self.b = nn.Conv2d(3, 16, 3, padding=1), ChannelGain(16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.gain(self.a(x))))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_without_its_rule_the_op_freezes_the_channels_it_touches(frontend):
    model, x = GainNet().eval(), torch.randn(2, 3, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, frontend=frontend, target="none")
    assert result.plan.keep == {}
    reasons = [r for g in result.report.frozen_groups for r in g.frozen_reasons]
    assert any("channel_gain" in r or "ChannelGain" in r for r in reasons), reasons


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_one_rule_prunes_the_family_under_both_frontends_and_in_the_callers_module(frontend):
    model, x = GainNet().eval(), torch.randn(2, 3, 8, 8)
    dense_gain = model.gain.gain.detach().clone()
    result = graphprune.prune_graph(model, x, ratio=0.5, frontend=frontend, target="none", rules=gain_rules())
    assert max_exactness_error(model, (x,), result) <= 1e-5
    params = dict(result.model.named_parameters())
    kept = [name for name in params if name.endswith("gain")]
    assert [params[n].shape for n in kept] == [torch.Size([8])]  # physically sliced, not masked
    assert result.report.macs_after < result.report.macs_before
    module = result.module  # the caller's class: its `channels` resized by the rule, its forward unchanged
    assert isinstance(module, GainNet) and module.gain.channels == 8 and module.a.out_channels == 8
    torch.testing.assert_close(module(x), result.model(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(model.gain.gain, dense_gain) and model.gain.channels == 16  # the caller's model untouched
