"""Bad input gets a GraphPruneError subclass that names what, where and how to fix; the model is unchanged."""
import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.errors import GraphPruneError, InputError, TraceError
from op_models import ConvChain, Residual, example_input


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, model.training


def _assert_unchanged(model, snap):
    state, training = snap
    assert model.training == training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.c(x)
        return self.c(-x)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "half", True])
def test_ratio_outside_range(ratio):
    model = ConvChain()
    snap = _snapshot(model)
    with pytest.raises(InputError, match="ratio must be a number in \\[0, 1\\)"):
        graphprune.prune_graph(model, example_input(ConvChain), ratio=ratio)
    _assert_unchanged(model, snap)


def test_exactly_one_amount():
    with pytest.raises(InputError, match="exactly one of ratio, target_params, target_macs, target_kv_bytes \\(got none\\)"):
        graphprune.prune_graph(ConvChain(), example_input(ConvChain))
    with pytest.raises(InputError, match="got ratio, target_macs"):
        graphprune.prune_graph(ConvChain(), example_input(ConvChain), ratio=0.5, target_macs=10)


def test_ignore_unknown_name_suggests_close_match():
    model = ConvChain()
    snap = _snapshot(model)
    with pytest.raises(InputError, match="'a.00' names no module.*Did you mean a.0"):
        graphprune.prune_graph(model, example_input(ConvChain), ratio=0.5, ignore=["a.00"])
    _assert_unchanged(model, snap)


def test_ignore_foreign_module():
    with pytest.raises(InputError, match="not a submodule"):
        graphprune.prune_graph(ConvChain(), example_input(ConvChain), ratio=0.5, ignore=[nn.Conv2d(1, 1, 1)])


def test_ignore_keeps_output_channels():
    model = Residual().eval()
    result = graphprune.prune_graph(model, example_input(Residual), ratio=0.5, ignore=[model.b1[0][0], "stem"],
                                    target="none")  # no channel step: 8 channels may become 4 on any CPU
    assert result.model.get_submodule("b1.0.0").out_channels == model.b1[0][0].out_channels
    assert result.model.get_submodule("stem.0").out_channels == model.stem[0].out_channels
    assert any("ignore" in r for g in result.report.frozen_groups for r in g.frozen_reasons)
    assert result.model.get_submodule("b2.0.0").out_channels < model.b2[0][0].out_channels


@pytest.mark.parametrize("inputs, match", [
    (torch.randn(2, 4, 16, 16), "node `a_0`.*example_inputs"),
    ((torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)), "takes 1 input.*2 example"),
    ([1, 2], "must be a tensor or a tuple of tensors"),
])
def test_example_inputs_that_do_not_match(inputs, match):
    model = ConvChain()
    snap = _snapshot(model)
    with pytest.raises(InputError, match=match):
        graphprune.prune_graph(model, inputs, ratio=0.5)
    _assert_unchanged(model, snap)


def test_untraceable_model_names_code_and_fix():
    model = Untraceable()
    snap = _snapshot(model)
    with pytest.raises(TraceError) as info:
        graphprune.prune_graph(model, torch.randn(1, 3, 8, 8), ratio=0.5)
    message = str(info.value)
    assert "test_api_errors.py" in message and "x.sum() > 0" in message
    assert "torch.fx.wrap" in message and "leaf" in message
    _assert_unchanged(model, snap)


def test_bad_options():
    with pytest.raises(InputError, match="scope"):
        graphprune.prune_graph(ConvChain(), example_input(ConvChain), ratio=0.5, scope="everywhere")
    with pytest.raises(InputError, match="unknown importance"):
        graphprune.prune_graph(ConvChain(), example_input(ConvChain), ratio=0.5, importance="l3")
    with pytest.raises(InputError, match="round_to"):
        graphprune.prune_graph(ConvChain(), example_input(ConvChain), ratio=0.5, round_to=0)
    with pytest.raises(InputError, match="nn.Module"):
        graphprune.prune_graph(lambda x: x, torch.randn(1), ratio=0.5)


def test_all_errors_share_the_base_class():
    for cls in (InputError, TraceError):
        assert issubclass(cls, GraphPruneError)


def test_ratio_zero_is_identity():
    model = ConvChain().eval()
    x = example_input(ConvChain)
    result = graphprune.prune_graph(model, x, ratio=0.0)
    assert result.report.params_after == result.report.params_before
    assert torch.equal(result.model(x), model(x))
