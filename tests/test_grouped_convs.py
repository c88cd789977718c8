"""Grouped convolutions are pruned inside every group by default (the group count stays, the same channels go
from each group), exactly, under both frontends and in the caller's module; whole groups on request."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune.errors import InputError
from graphprune.rules.conv import GroupedConv
from graphprune.targets import Target
from graphprune.verify import max_exactness_error
from conftest import randomize_norms


class GroupedBlock(nn.Module):
    """A ResNeXt-style bottleneck without the residual: 1x1, grouped 3x3 (4 groups of 8), 1x1."""

    def __init__(self):
        super().__init__()
        self.reduce, self.bn1 = nn.Conv2d(8, 32, 1, bias=False), nn.BatchNorm2d(32)
        self.grouped, self.bn2 = nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32)
        self.expand = nn.Conv2d(32, 8, 1)

    def forward(self, x):
        x = torch.relu(self.bn1(self.reduce(x)))
        return self.expand(torch.relu(self.bn2(self.grouped(x))))


class FunctionalGrouped(nn.Module):
    """The grouped conv as F.conv2d on a parameter (a library's own conv module), groups=2 with k_out=2 k_in."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 16, 1)
        self.weight = nn.Parameter(torch.randn(32, 8, 3, 3) * 0.2)
        self.b = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(F.conv2d(torch.relu(self.a(x)), self.weight, None, 1, 1, 1, 2)))


def _grouped(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_within_groups_keeps_the_group_count_and_is_exact(frontend):
    model, x = randomize_norms(GroupedBlock()).eval(), torch.randn(2, 8, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, frontend=frontend, target="none")
    assert max_exactness_error(model, (x,), result) <= 1e-5
    weights = {n: p.shape for n, p in result.model.named_parameters() if n.endswith("weight") and len(p.shape) == 4}
    grouped = next(shape for name, shape in weights.items() if tuple(shape[1:]) != (32, 1, 1) and shape[2] == 3)
    assert tuple(grouped) == (16, 4, 3, 3)  # 4 groups of 4 inputs and 4 outputs each: half of every group
    module = result.module
    (conv,) = _grouped(module)
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, 16, 16)
    torch.testing.assert_close(module(x), result.model(x), rtol=1e-5, atol=1e-5)


def test_whole_groups_on_request_removes_groups():
    model, x = randomize_norms(GroupedBlock()).eval(), torch.randn(2, 8, 8, 8)
    whole = graphprune.prune_graph(model, x, ratio=0.5, target="none", grouped_convs="whole")
    within = graphprune.prune_graph(model, x, ratio=0.5, target="none")
    assert max_exactness_error(model, (x,), whole) <= 1e-5
    (conv,) = _grouped(whole.module)
    assert (conv.groups, conv.in_channels // conv.groups) == (2, 8)  # whole groups gone, each group as wide
    assert within.report.params_after < whole.report.params_after  # inside groups, the grouped conv's inputs go too


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_functional_grouped_conv_is_pruned_within_groups(frontend):
    model, x = FunctionalGrouped().eval(), torch.randn(1, 4, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, frontend=frontend, target="none")
    assert max_exactness_error(model, (x,), result) <= 1e-5
    shapes = [tuple(p.shape) for p in result.model.parameters() if p.dim() == 4 and p.shape[2] == 3]
    assert shapes == [(16, 4, 3, 3)]  # 2 groups kept, each with half its inputs and outputs


def test_a_bad_grouped_convs_value_is_one_clear_error():
    with pytest.raises(InputError, match="grouped_convs must be one of"):
        graphprune.prune_graph(GroupedBlock(), torch.randn(1, 8, 8, 8), ratio=0.5, grouped_convs="halves")


def test_round_to_puts_the_layer_width_on_its_step_inside_groups_and_a_runtime_step_prunes_whole_groups():
    """round_to=8 asks for layer widths that are multiples of 8: 4 groups of 4 (16) is one, so the default stays
    inside groups, as Torch-Pruning's round_to does. A runtime target's grouped-conv step is on each group's own
    width (4 cannot land on 8), so its default is whole groups."""
    model, x = randomize_norms(GroupedBlock()).eval(), torch.randn(2, 8, 8, 8)
    rounded = graphprune.prune_graph(model, x, ratio=0.5, round_to=8)
    assert max_exactness_error(model, (x,), rounded) <= 1e-5
    (conv,) = _grouped(rounded.module)
    assert (conv.groups, conv.in_channels, conv.out_channels) == (4, 16, 16)
    runtime = Target("runtime8", dense_conv=8, grouped_conv=8, linear=8)
    assert (Target.uniform(8).grouped_convs, runtime.grouped_convs) == (GroupedConv.WITHIN, GroupedConv.WHOLE)
    (conv,) = _grouped(graphprune.prune_graph(model, x, ratio=0.5, target=runtime).module)
    assert (conv.groups, conv.in_channels // conv.groups) == (2, 8)


def test_a_callers_own_convolution_rule_is_kept_and_follows_grouped_convs():
    """prune_graph's grouped-conv choice changes the convolution rules of the caller's table, not replaces them."""
    from graphprune.rules.conv import ConvModule, ConvRule

    seen = []

    class Watched(ConvRule):
        def couple(self, node, ctx):
            seen.append((node.name, self.grouped))
            return super().couple(node, ctx)

    rules = graphprune.default_rules().with_rule(nn.Conv2d, Watched(ConvModule()))
    model, x = randomize_norms(GroupedBlock()).eval(), torch.randn(2, 8, 8, 8)
    whole = graphprune.prune_graph(model, x, ratio=0.5, target="none", grouped_convs="whole", rules=rules)
    assert seen == [(name, GroupedConv.WHOLE) for name in ("reduce", "grouped", "expand")]
    (conv,) = _grouped(whole.module)
    assert conv.groups == 2
    seen.clear()
    graphprune.prune_graph(model, x, ratio=0.5, target="none", rules=rules)
    assert seen == [(name, GroupedConv.WITHIN) for name in ("reduce", "grouped", "expand")]


@pytest.mark.parametrize("how", [{"target": "none", "grouped_convs": "whole"}, {"target": "ort-x86"}])
def test_a_plan_replays_with_the_grouped_convs_it_was_made_with(how):
    """A runtime target prunes grouped convs by whole groups; its plan.json says so, and apply_plan replays it so
    (analysed within groups, the replay would meet other groups: a 4-channel group against a 16-channel one)."""
    model, x = randomize_norms(GroupedBlock()).eval(), torch.randn(2, 8, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, **how)
    assert result.plan.analysed_with == {"grouped_convs": "whole"}
    replay = graphprune.apply_plan(model, x, result.plan.to_json())
    assert replay.plan == result.plan and replay.plan.analysed_with == {"grouped_convs": "whole"}
    torch.testing.assert_close(replay.model(x), result.model(x), rtol=0, atol=0)
    (conv,) = _grouped(replay.module)
    assert conv.groups == 2


@pytest.mark.parametrize("target", [{}, {"target": "ort-x86"}, {"target": "none"}])
def test_sensitivity_names_the_groups_prune_graph_prunes_under_the_same_target(target):
    """Both default to target "auto" (whole groups on x86): the table's groups are the ones `ratios` takes."""
    model, x = randomize_norms(GroupedBlock()).eval(), torch.randn(2, 8, 8, 8)
    table = graphprune.sensitivity(model, x, lambda m: 1.0, ratios=(0.5,), **target)
    pruned = graphprune.prune_graph(model, x, ratio=0.5, **target)
    assert sorted({row.group for row in table.rows}) == sorted(g.id for g in pruned.graph.prunable)
    again = graphprune.prune_graph(model, x, ratio=0.0, ratios={row.group: 0.5 for row in table.rows}, **target)
    assert again.plan.keep.keys() == pruned.plan.keep.keys()
