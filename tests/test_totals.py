"""Honest totals: params_before is the caller's whole model, unused parameters are reported as dead code."""
import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.models import ZOO


class WithAuxHead(nn.Module):
    """An Inception-style auxiliary classifier that only training mode runs."""

    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 10, 1)
        self.aux = nn.Sequential(nn.Conv2d(16, 8, 1), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))

    def forward(self, x):
        y = torch.relu(self.stem(x))
        out = self.head(y).mean((2, 3))
        if self.training:
            return out, self.aux(y)
        return out


def test_unused_auxiliary_head_counts_before_and_is_removed_as_dead_code():
    model = WithAuxHead().eval()
    x = torch.randn(1, 3, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none")
    report = result.report
    assert report.params_before == sum(p.numel() for p in model.parameters())
    assert report.params_after == sum(p.numel() for p in result.model.parameters())
    aux = sum(p.numel() for p in model.aux.parameters())
    assert report.unused_modules == ("aux.0", "aux.2")
    removed_by_groups = sum(g.params_removed for g in report.groups)
    assert report.params_removed_dead_code >= aux
    assert report.params_before - report.params_after == removed_by_groups + report.params_removed_dead_code
    assert "aux.0" in report.summary()
    assert graphprune.analyse(model, x).predict(result.plan).params == report.params_after


@pytest.mark.parametrize("name", sorted(ZOO))
def test_params_before_is_the_whole_zoo_model(name):
    spec = ZOO[name]
    model = spec.build()
    analysis = graphprune.analyse(model, spec.example_inputs())
    assert analysis.stats.params == sum(p.numel() for p in model.parameters())
