"""One policy for statistics over the channels: a normalisation written by hand (L2, RMS) is pruned like LayerNorm,
the statistic then taken over the kept channels; any other reduction over the channels freezes them."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune

NORMALISATIONS = {
    "l2 by hand": lambda h: h / h.pow(2).sum(dim=1, keepdim=True).sqrt(),
    "norm": lambda h: h / h.norm(dim=1, keepdim=True),
    "rms": lambda h: h * torch.rsqrt((h * h).mean(1, keepdim=True) + 1e-6),
    "F.normalize": lambda h: F.normalize(h),  # dim=1 by default; under torch.export: norm, clamp, expand, div
    "F.normalize p=1": lambda h: F.normalize(h, p=1.0, dim=-3, eps=1e-6),
    "expanded norm": lambda h: h / h.norm(dim=1, keepdim=True).expand(-1, h.size(1), -1, -1),
}


class Normalised(nn.Module):
    def __init__(self, normalise):
        super().__init__()
        self.a, self.b, self.normalise = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1), normalise

    def forward(self, x):
        return self.b(self.normalise(self.a(x)))


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("name", sorted(NORMALISATIONS))
def test_a_normalisation_by_hand_is_pruned_over_the_kept_channels(name, frontend):
    model, x = Normalised(NORMALISATIONS[name]).eval(), torch.randn(2, 3, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, frontend=frontend, target="none")
    (kept,) = result.plan.keep.values()
    k = torch.as_tensor(kept)
    assert len(k) == 8
    with torch.no_grad():  # the same model on the kept channels: the statistic over those only
        h = NORMALISATIONS[name](F.conv2d(x, model.a.weight[k], model.a.bias[k], padding=1))
        reference = F.conv2d(h, model.b.weight[:, k], model.b.bias)
        torch.testing.assert_close(result.model(x), reference, rtol=1e-5, atol=1e-5)
    assert len(result.report.renormalised) == 1  # the report says which statistic is no longer exact
    assert "not exact, valid" in result.report.summary()


def test_layer_norm_over_pruned_channels_is_reported_not_exact_and_batch_norm_is_not():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.norm, self.b = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(self.norm(self.a(x)))

    result = graphprune.prune_graph(Tokens().eval(), torch.randn(2, 5, 8), ratio=0.5, frontend="fx", target="none")
    assert [r.split(" ")[0] for r in result.report.renormalised] == ["`norm`"]
    model, x = Normalised(nn.BatchNorm2d(16)).eval(), torch.randn(2, 3, 8, 8)
    assert graphprune.prune_graph(model, x, ratio=0.5, target="none").report.renormalised == ()


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_reduction_that_does_not_only_rescale_freezes(frontend):
    model, x = Normalised(lambda h: h - h.mean(1, keepdim=True)).eval(), torch.randn(2, 3, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, frontend=frontend, target="none")
    assert result.plan.keep == {}
    reasons = [r for g in result.report.frozen_groups for r in g.frozen_reasons]
    assert any("reduces over the channel dim" in r for r in reasons), reasons


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_f_normalize_along_another_dim_is_exact_and_its_caller_class_is_rebuilt(frontend):
    model, x = Normalised(lambda h: F.normalize(h, dim=-1)).eval(), torch.randn(2, 3, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, frontend=frontend, target="none")
    (kept,) = result.plan.keep.values()
    k = torch.as_tensor(kept)
    with torch.no_grad():  # normalising each channel's rows: the kept channels' values are the dense ones
        reference = F.conv2d(F.normalize(model.a(x), dim=-1)[:, k], model.b.weight[:, k], model.b.bias)
        torch.testing.assert_close(result.model(x), reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result.module(x), reference, rtol=1e-5, atol=1e-5)
    assert len(k) == 8 and result.report.renormalised == ()
