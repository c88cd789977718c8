"""Ops without a rule are probed: channel-wise ones carry channels (exactly), the rest stay frozen."""
import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.verify import max_exactness_error


class Between(nn.Module):
    """conv -> op -> conv: the op decides whether the middle channels can be pruned."""

    def __init__(self, op):
        super().__init__()
        self.a, self.b, self.op = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1), op

    def forward(self, x):
        return self.b(self.op(self.a(x)))


CHANNEL_WISE = {"erf": torch.erf, "square": torch.square, "sign_times_x": lambda t: torch.sign(t) * t.abs().sqrt()}
MIXING = {"cumsum over channels": lambda t: torch.cumsum(t, 1), "flip channels": lambda t: torch.flip(t, [1]),
          "logcumsumexp": lambda t: torch.logcumsumexp(t, 1)}  # torch.roll has a rule (test_spellings.py)


@pytest.mark.parametrize("name", sorted(CHANNEL_WISE))
def test_a_channel_wise_op_without_a_rule_is_probed_and_pruned_exactly(name):
    model, x = Between(CHANNEL_WISE[name]).eval(), torch.randn(1, 3, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="fx")
    assert result.report.probed_ops and all("(probed)" in p for p in result.report.probed_ops)
    assert result.model.a.out_channels == 8
    assert max_exactness_error(model, (x,), result) <= 1e-5


@pytest.mark.parametrize("name", sorted(MIXING))
def test_an_op_that_mixes_channels_fails_the_probe_and_freezes(name):
    model, x = Between(MIXING[name]).eval(), torch.randn(1, 3, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="fx")
    assert not result.report.probed_ops
    assert result.model.a.out_channels == 16
    assert any("has no rule" in r for g in result.report.frozen_groups for r in g.frozen_reasons)
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), atol=1e-5)
