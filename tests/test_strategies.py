"""Strategies: global scope with its guard, target_params / target_macs, per-module ratios, exact predictions."""
import math

import numpy as np
import pytest
import torch

import graphprune
from graphprune.errors import InputError
from graphprune.models import ZOO
from conftest import RandomScores
from op_models import EXACT, ConvChain, DenseBlock, Residual, example_input

TARGET_MODELS = ("resnet56", "squeezenet1_1", "shufflenet_v2_x1_0", "mobilenet_v2", "vit_tiny")


def _analysed(model, inputs):
    return graphprune.analyse(model, inputs)


def _predict(analysis, plan):
    counts = analysis.predict(plan)
    return counts.params, counts.macs


def _dearest_channel(analysis, what):
    """Upper bound on what one channel of any prunable group costs (first order: nothing else pruned)."""
    graph, shapes = analysis.dependencies, analysis.cost.param_shapes
    if what == "macs":
        return max(analysis.cost.channel_macs(g).max() for g in graph.prunable)
    return max(sum(math.prod(shapes[s.name]) * np.bincount(m).max() / m.size
                   for s, m in g.members.items() if s.name in shapes) for g in graph.prunable)


@pytest.mark.parametrize("name", TARGET_MODELS)
@pytest.mark.parametrize("what", ["params", "macs"])
def test_targets_land_within_one_channel(name, what):
    spec = ZOO[name]
    model, x = spec.build(), spec.example_inputs()
    analysis = _analysed(model, x)
    stats = analysis.stats
    goal = int((stats.params if what == "params" else stats.macs) * 0.45)
    result = graphprune.prune_graph(model, x, scope="global", target="none", **{f"target_{what}": goal})
    got = result.report.params_after if what == "params" else result.report.macs_after
    assert got <= goal
    assert goal - got <= _dearest_channel(analysis, what)


def test_local_target_uses_the_ratio_knob():
    spec = ZOO["resnet56"]
    model, x = spec.build(), spec.example_inputs()
    result = graphprune.prune_graph(model, x, target_macs=40_000_000, target="none")
    assert result.report.macs_after <= 40_000_000
    sizes = {g.channels_before for g in result.report.groups if g.channels_after < g.channels_before}
    assert sizes  # every pruned group lost the same share, up to rounding of ceil(r * size)
    shares = {round(1 - g.channels_after / g.channels_before, 1) for g in result.report.groups
              if g.channels_after < g.channels_before and g.channels_before >= 32}
    assert len(shares) == 1


def test_global_scope_never_collapses_below_the_guard():
    model = DenseBlock().eval()
    for min_keep in (0.1, 0.25, 0.5):
        result = graphprune.prune_graph(model, example_input(DenseBlock), ratio=0.9, scope="global",
                                        importance=RandomScores(1), min_keep=min_keep, target="none")
        for g in result.report.groups:
            if not g.frozen_reasons:
                assert g.channels_after >= max(1, math.ceil(min_keep * g.channels_before - 1e-9))


@pytest.mark.parametrize("kwargs, match", [
    ({"target_macs": 10**12}, "must be a positive number below the model's"),
    ({"target_params": 0}, "must be a positive number below"),
    ({"target_params": 10, "min_keep": 0.5}, "cannot be reached without collapsing a group"),
])
def test_bad_targets(kwargs, match):
    model = Residual().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match=match):
        graphprune.prune_graph(model, example_input(Residual), **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_per_module_ratios_override_the_default():
    model = Residual().eval()
    result = graphprune.prune_graph(model, example_input(Residual), ratio=0.25, ratios={"b1.0.0": 0.75, "b3": 0.0},
                                    target="none")
    assert result.model.get_submodule("b1.0.0").out_channels == 2  # 8 * (1 - 0.75)
    assert result.model.get_submodule("b2.0.0").out_channels == 6  # default 0.25
    assert result.model.get_submodule("b3.0.0").out_channels == 12  # override 0
    with pytest.raises(InputError, match="names no module"):
        graphprune.prune_graph(model, example_input(Residual), ratio=0.25, ratios={"b9": 0.5})


@pytest.mark.parametrize("cls", EXACT, ids=lambda c: c.__name__)
def test_predicted_counts_equal_measured(cls):
    model = cls().eval()
    x = (example_input(cls),)
    result = graphprune.prune_graph(model, x, ratio=0.5, importance=RandomScores(2), target="none")
    analysis = _analysed(model, x)
    assert _predict(analysis, result.plan) == (result.report.params_after, result.report.macs_after)


@pytest.mark.parametrize("name", ["vit_tiny", "shufflenet_v2_x1_0", "resnet56"])
def test_predicted_counts_equal_measured_on_zoo(name):
    spec = ZOO[name]
    model, x = spec.build(), spec.example_inputs()
    result = graphprune.prune_graph(model, x, ratio=0.4, importance=RandomScores(5))
    analysis = _analysed(model, x)
    assert _predict(analysis, result.plan) == (result.report.params_after, result.report.macs_after)


def _removed(result, gid):
    return result.plan.sizes[gid] - len(result.plan.keep[gid]) if gid in result.plan.keep else 0


def test_channel_costs_prune_the_costly_group_first():
    """Ranked by importance per unit saved: at cost ratio 10, every candidate of the costly group ranks below
    every channel of the cheap one (scores normalised per group stay within a factor of 10 here)."""
    model, x = ConvChain().eval(), example_input(ConvChain)
    a, b = (g.id for g in _analysed(model, (x,)).dependencies.prunable)  # 16 and 24 channels
    kwargs = dict(ratio=0.3, scope="global", target="none")  # removes ceil(0.3 * 40) = 12 channels
    plain = graphprune.prune_graph(model, x, **kwargs)
    assert graphprune.prune_graph(model, x, channel_costs={a: 3.0, b: 3.0}, **kwargs).plan == plain.plan
    for costly, cheap in ((a, b), (b, a)):
        result = graphprune.prune_graph(model, x, channel_costs={costly: 10.0, cheap: 1.0}, **kwargs)
        assert (_removed(result, costly), _removed(result, cheap)) == (12, 0)
    assert {_removed(plain, a), _removed(plain, b)} != {12, 0}  # so the costs, not the scores, chose


@pytest.mark.parametrize("kwargs, match", [
    ({"channel_costs": {"x": 1.0}}, "need scope='global'"),
    ({"channel_costs": {"x": 0.0}, "scope": "global"}, r"channel_costs\['x'\] is 0.0; a cost is a positive"),
    ({"channel_costs": {"x": float("nan")}, "scope": "global"}, "positive finite number"),
    ({"channel_costs": {"x": True}, "scope": "global"}, "positive finite number"),
    ({"channel_costs": {"no.such.group": 1.0}, "scope": "global"}, "names group 'no.such.group', which this model"),
])
def test_bad_channel_costs(kwargs, match):
    with pytest.raises(InputError, match=match):
        graphprune.prune_graph(ConvChain().eval(), example_input(ConvChain), ratio=0.5, **kwargs)
