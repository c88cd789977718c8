"""Plans are data: JSON round-trip, replay on a fresh copy or on retrained weights, validation."""
import json

import pytest
import torch

import graphprune
from graphprune import PrunePlan, apply_plan
from graphprune.errors import InputError
from op_models import ChannelShuffle, DenseBlock, Inception, example_input


def _shapes(m):
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("cls", [DenseBlock, ChannelShuffle])
def test_plan_json_round_trip_and_replay(cls):
    model = cls().eval()
    x = example_input(cls)
    result = graphprune.prune_graph(model, x, ratio=0.5)
    text = result.plan.to_json()
    plan = PrunePlan.from_json(text)
    assert plan == PrunePlan.from_json(json.dumps(json.loads(text)))
    assert dict(plan.keep) == dict(result.plan.keep) and dict(plan.sizes) == dict(result.plan.sizes)
    replay = apply_plan(model, x, plan)
    assert _shapes(replay.model) == _shapes(result.model)
    with torch.no_grad():
        assert torch.equal(replay.model(x), result.model(x))
    assert _measured(replay.report) == _measured(result.report)


def _measured(report):
    """The measured figures of a report (a replay cannot know how the original plan was rounded)."""
    return (report.params_before, report.params_after, report.macs_before, report.macs_after,
            [(g.id, g.channels_before, g.channels_after, g.params_removed) for g in report.groups])


def test_replay_on_retrained_weights():
    model = Inception().eval()
    x = example_input(Inception)
    result = graphprune.prune_graph(model, x, ratio=0.5)
    retrained = Inception().eval()  # same architecture, other weights
    replay = apply_plan(retrained, x, result.plan.to_json())
    assert _shapes(replay.model) == _shapes(result.model)
    kept = result.plan.keep[result.graph.group_of(next(s for s in result.graph.groups[1].members)).id]
    assert torch.equal(replay.model.get_submodule("stem.0").weight, retrained.stem[0].weight[list(kept)])


def test_plan_for_another_architecture_is_rejected():
    plan = graphprune.prune_graph(DenseBlock().eval(), example_input(DenseBlock), ratio=0.5).plan
    with pytest.raises(InputError, match="does not have|this model's has"):
        apply_plan(Inception().eval(), example_input(Inception), plan)


def test_plan_with_bad_indices_is_rejected():
    model = DenseBlock().eval()
    plan = graphprune.prune_graph(model, example_input(DenseBlock), ratio=0.5).plan
    gid = next(iter(plan.keep))
    broken = PrunePlan({gid: (0, 0)}, {gid: plan.sizes[gid]})
    with pytest.raises(InputError, match="invalid indices"):
        apply_plan(model, example_input(DenseBlock), broken)
    with pytest.raises(InputError, match="not a graphprune plan"):
        PrunePlan.from_json("{\"groups\": 3}")


def test_analysed_with_round_trips_and_a_bad_one_is_rejected():
    plan = PrunePlan({"g": (0, 2)}, {"g": 4}, {"grouped_convs": "whole", "gqa": "query_heads"})
    again = PrunePlan.from_json(plan.to_json())
    assert again == plan and again.analysed_with == {"grouped_convs": "whole", "gqa": "query_heads"}
    unset = PrunePlan({"g": (0, 2)}, {"g": 4})
    assert "analysed_with" not in json.loads(unset.to_json())  # plans without settings are written as they were
    for bad in ({"grouped": "whole"}, {"grouped_convs": 2}, ["grouped_convs"]):
        text = json.dumps({"format": 1, "analysed_with": bad, "groups": {"g": {"size": 4, "keep": [0, 2]}}})
        with pytest.raises(InputError, match="analysed_with must map"):
            PrunePlan.from_json(text)
    text = json.dumps({"format": 1, "analysed_with": {"grouped_convs": "halves"},
                       "groups": {"g": {"size": 4, "keep": [0]}}})
    with pytest.raises(InputError, match="grouped_convs must be one of"):
        apply_plan(DenseBlock().eval(), example_input(DenseBlock), text)
