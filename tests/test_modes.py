"""Train/eval modes are kept module by module: a BatchNorm frozen in eval inside a model that trains stays so."""
import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.modes import evaluating


class FrozenNorms(nn.Module):
    """Two conv blocks; the model trains, its BatchNorms are frozen (eval mode), one dropout stays active."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(0.1))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.b(self.a(x)).mean((2, 3)))


def frozen_norms() -> FrozenNorms:
    torch.manual_seed(0)
    model = FrozenNorms().train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model


def modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def test_evaluating_puts_each_module_back_in_its_own_mode_after_an_exception_too():
    model = frozen_norms()
    before = modes(model)
    with pytest.raises(RuntimeError, match="inside"):
        with evaluating(model):
            assert not any(modes(model).values())
            raise RuntimeError("inside")
    assert modes(model) == before and not model.a[1].training and model.b[3].training


@pytest.mark.parametrize("importance", ["l2", "taylor", "activation", "wanda"])
def test_a_pruned_model_keeps_the_modes_of_the_callers_modules(importance):
    """Data-driven criteria run the analysed model on the calibration batches; that too leaves every mode alone."""
    model = frozen_norms()
    before = modes(model)
    calibration = [(torch.randn(2, 3, 8, 8), torch.randn(2, 4))]
    result = graphprune.prune_graph(model, (torch.randn(1, 3, 8, 8),), ratio=0.5, target="none", importance=importance,
                                    calibration=calibration, loss_fn=lambda out, y: ((out - y) ** 2).mean())
    assert modes(model) == before  # the caller's model
    assert result.report.params_after < result.report.params_before
    for pruned in (result.model, result.dense, result.module):
        kept = modes(pruned)
        shared = set(kept) & set(before)
        assert {"a.1", "b.1", "b.3"} <= shared
        assert {name: kept[name] for name in shared} == {name: before[name] for name in shared}
