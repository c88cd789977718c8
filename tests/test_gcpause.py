"""paused_gc: the cyclic collector is off inside prune_graph and the caller's setting comes back, errors included."""
import gc

import numpy as np
import pytest

import graphprune
from graphprune.errors import InputError
from graphprune.gcpause import paused_gc
from op_models import ConvChain, example_input


@pytest.fixture
def collector_state():
    enabled = gc.isenabled()
    yield
    (gc.enable if enabled else gc.disable)()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_callers_setting_comes_back_after_a_return_and_after_an_error(collector_state, enabled):
    (gc.enable if enabled else gc.disable)()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled() is enabled
    with pytest.raises(ValueError), paused_gc():
        raise ValueError("boom")
    assert gc.isenabled() is enabled


def test_prune_graph_scores_with_the_collector_paused_and_restores_it_even_when_it_fails(collector_state):
    gc.enable()
    seen = []

    def importance(group, model):
        seen.append(gc.isenabled())
        return np.arange(group.size, dtype=float)

    model, x = ConvChain().eval(), example_input(ConvChain)
    result = graphprune.prune_graph(model, x, ratio=0.5, importance=importance, target="none")
    assert result.plan.keep and seen and not any(seen) and gc.isenabled()
    with pytest.raises(InputError):
        graphprune.prune_graph(model, (x, x, x), ratio=0.5, target="none")
    assert gc.isenabled()
