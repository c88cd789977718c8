"""Exactness: zeroing the dropped channels' consumer weights == removing the channels physically."""
import pytest
import torch

import graphprune
from graphprune.verify import max_exactness_error
from conftest import RandomScores, randomize_norms
from op_models import EXACT, SHAPE_ONLY, example_input


def _numel(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("cls", EXACT, ids=lambda c: c.__name__)
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_physical_removal_matches_zeroed_consumers(cls, ratio):
    model = randomize_norms(cls()).eval()
    x = example_input(cls)
    result = graphprune.prune_graph(model, x, ratio=ratio, importance=RandomScores(int(ratio * 10)), target="none")
    assert result.plan.keep, "nothing was pruned"
    assert result.report.params_after < result.report.params_before
    assert max_exactness_error(model, (x,), result) <= 1e-5


@pytest.mark.parametrize("cls", EXACT + SHAPE_ONLY, ids=lambda c: c.__name__)
def test_accounting_is_measured(cls):
    model = randomize_norms(cls()).eval()
    result = graphprune.prune_graph(model, example_input(cls), ratio=0.5)
    r = result.report
    assert r.params_before == _numel(model)
    assert r.params_after == _numel(result.model)
    assert r.params_before - r.params_after == sum(g.params_removed for g in r.groups) + r.params_removed_dead_code


@pytest.mark.parametrize("cls", SHAPE_ONLY, ids=lambda c: c.__name__)
def test_normalising_ops_keep_shapes(cls):
    model = cls().eval()
    x = example_input(cls)
    result = graphprune.prune_graph(model, x, ratio=0.5)
    assert result.plan.keep
    assert result.model(x).shape == model(x).shape
    assert r_smaller(result)


def r_smaller(result):
    return result.report.params_after < result.report.params_before


def test_caller_model_is_untouched():
    model = randomize_norms(EXACT[0]()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graphprune.prune_graph(model, example_input(EXACT[0]), ratio=0.5)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_registering_a_buffer_on_the_pruned_model_leaves_the_callers_state_dict_alone():
    """The pruned model's modules have their own tables: re-registering a BatchNorm statistic as non-persistent on
    one of them (its set of non-persistent names) changes neither the caller's model nor the analysed copy."""
    model = randomize_norms(EXACT[0]()).eval()
    keys = list(model.state_dict())
    result = graphprune.prune_graph(model, example_input(EXACT[0]), ratio=0.5)
    dense_keys = list(result.dense.state_dict())
    for module in result.model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.register_buffer("running_mean", module.running_mean, persistent=False)
    assert not any(k.endswith("running_mean") for k in result.model.state_dict())
    assert list(model.state_dict()) == keys and any(k.endswith("running_mean") for k in keys)
    assert list(result.dense.state_dict()) == dense_keys
