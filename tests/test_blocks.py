"""Hand-built architecture blocks pruned at several ratios: they run, keep output shapes and lose what was asked."""
import math

import pytest
import torch

import graphprune
from op_models import ChannelShuffle, DenseBlock, Depthwise, FlattenHead, Inception, Residual, SqueezeExcite, example_input

BLOCKS = [Residual, DenseBlock, Inception, Depthwise, SqueezeExcite, ChannelShuffle, FlattenHead]


@pytest.mark.parametrize("cls", BLOCKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_block_prunes_as_asked(cls, ratio):
    model = cls().eval()
    x = example_input(cls)
    result = graphprune.prune_graph(model, x, ratio=ratio, target="none")  # the ratio alone, no runtime rounding
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape
    assert result.report.params_after < result.report.params_before
    for g in result.report.groups:
        if g.frozen_reasons or g.channels_before < 2:
            continue
        asked = ratio * g.channels_before
        removed = g.channels_before - g.channels_after
        assert removed >= 0.9 * asked - 1e-9 or removed == g.channels_before - 1, (g.id, removed, asked)


def test_only_inputs_and_outputs_are_frozen_in_blocks():
    for cls in BLOCKS:
        result = graphprune.prune_graph(cls().eval(), example_input(cls), ratio=0.5)
        reasons = {r for g in result.report.frozen_groups for r in g.frozen_reasons}
        assert all("model input" in r or "model output" in r for r in reasons), (cls.__name__, reasons)


def test_flatten_then_linear_prunes_whole_columns():
    model = FlattenHead().eval()
    result = graphprune.prune_graph(model, example_input(FlattenHead), ratio=0.5)
    kept = next(g for g in result.report.groups if g.id.startswith("b_"))
    # each conv channel feeds 4*4 = 16 columns of fc1
    assert result.model.fc1.in_features == kept.channels_after * 16
    assert math.isclose(result.model.fc1.in_features / model.fc1.in_features, kept.channels_after / kept.channels_before)
