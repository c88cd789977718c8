"""A freeze says where the channels really come from: a model input reshaped before its first layer is named as
the input, under both frontends."""
import pytest
import torch
import torch.nn as nn

import graphprune


class ReshapedInput(nn.Module):
    """Takes flat vectors and views them as images before the first conv."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x.view(x.shape[0], 3, 8, 8))))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_reshaped_model_input_is_named_as_the_input(frontend):
    result = graphprune.prune_graph(ReshapedInput().eval(), torch.randn(2, 192), ratio=0.5, frontend=frontend,
                                    target="none")
    reasons = [r for g in result.report.frozen_groups for r in g.frozen_reasons]
    assert any("channels come from model input `x`" in r for r in reasons), reasons
    assert not any("has no channel dim graphprune can follow" in r for r in reasons), reasons
    assert result.report.params_after < result.report.params_before  # a's outputs are still pruned
