"""Rounding keeps its word: with any target, each group keeps within one channel step of what was asked."""
import json

import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.models import ZOO
from graphprune.targets import Target

AVX512 = Target("ort-x86/avx512", dense_conv=16, grouped_conv=16, linear=8, one_block=True)
TARGETS = {"ort-x86/avx512": AVX512, "steps-8": Target.uniform(8), "conv-4": Target("conv-4", 4, 4, 1)}
MODELS = ("resnet18", "mobilenet_v2", "shufflenet_v2_x1_0", "resnet56", "vit_tiny")


class OddWidths(nn.Module):
    """Widths that fit no step: 37, 21 and a 13-wide depthwise layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 37, 3, padding=1), nn.Conv2d(37, 21, 1)
        self.dw, self.head = nn.Conv2d(21, 21, 3, padding=1, groups=21), nn.Conv2d(21, 13, 1)
        self.fc = nn.Linear(13, 5)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(self.head(torch.relu(self.dw(x))).mean((2, 3)))


def _cases():
    for name in MODELS:
        yield name, lambda name=name: (ZOO[name].build(), ZOO[name].example_inputs())
    yield "odd_widths", lambda: (OddWidths().eval(), (torch.randn(1, 3, 8, 8),))


def assert_rounding_kept_its_word(report, ratio):
    rounded = [g for g in report.groups if g.asked_before_rounding is not None]
    for g in rounded:
        if g.one_block_floor:
            continue  # the target's floor: reported, and allowed to keep more
        assert abs(g.channels_after - g.asked_before_rounding) <= g.round_step, (g, ratio)
    text = report.summary(full=True)
    for g in rounded:
        if g.asked_before_rounding != g.channels_after:
            assert f"{g.id} {g.asked_before_rounding}->{g.channels_after}" in text
        if g.off_step_layers:
            assert f"{g.id} ({g.channels_after} kept, step {g.round_step})" in text
    assert json.loads(json.dumps(report.to_json()))["target"] == report.target


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("name, build", list(_cases()), ids=[n for n, _ in _cases()])
def test_every_group_lands_within_one_step_of_the_ratio(name, build, target):
    model, x = build()
    analysis = graphprune.analyse(model, x)
    for ratio in (0.2, 0.35, 0.5, 0.7):
        result = analysis.prune(graphprune.Ratio(ratio), target=TARGETS[target])
        assert result.report.target == TARGETS[target].name
        assert_rounding_kept_its_word(result.report, ratio)


def test_rounding_goes_to_the_nearest_step_not_always_down():
    model, x = OddWidths().eval(), (torch.randn(1, 3, 8, 8),)
    # 37 channels at ratio 0.3: asked to keep 25; steps of 8 -> 24 (nearest), 21 at 0.3: keep 14 -> 16 (up)
    report = graphprune.prune_graph(model, x, ratio=0.3, target=Target.uniform(8)).report
    kept = {g.id.split(":")[0]: (g.asked_before_rounding, g.channels_after) for g in report.groups
            if g.asked_before_rounding is not None}
    assert kept["a"] == (25, 24)
    assert kept["b"] == (14, 16)


def test_the_summary_lists_every_rounding_only_when_asked():
    spec = ZOO["resnet18"]
    report = graphprune.prune_graph(spec.build(), spec.example_inputs(), ratio=0.3, target=Target.uniform(24)).report
    rounded = [g for g in report.groups if g.asked_before_rounding not in (None, g.channels_after)]
    assert len(rounded) > 4
    assert "summary(full=True) lists all" in report.summary()
    assert all(g.id in report.summary(full=True) for g in rounded)


def test_a_layer_left_narrower_than_one_step_is_reported_off_the_step():
    """round_to=16 on resnet56 at 0.5: each 16-wide layer is asked for 8; rounding up to 16 would keep more than
    asked and down to 0 would empty it, so it keeps 8, and the report says so instead of "no group needed rounding"."""
    model, x = ZOO["resnet56"].build(), ZOO["resnet56"].example_inputs()
    analysis = graphprune.analyse(model, x)
    report = analysis.prune(graphprune.Ratio(0.5), target=Target.uniform(16)).report
    off = [g for g in report.groups if g.off_step_layers]
    assert off and all(g.channels_before == 16 and g.channels_after == 8 and g.round_step == 16 for g in off)
    on = [g for g in report.groups if g.round_step == 16 and not g.off_step_layers and g.channels_after < g.channels_before]
    assert on and all(g.channels_after % 16 == 0 for g in on)  # the 32- and 64-wide stages land on the step
    text = report.summary(full=True)
    assert f"off the channel steps of target round_to=16: {len(off)} groups" in text
    assert "no group needed rounding" not in text
    floored = analysis.prune(graphprune.Ratio(0.5), target=AVX512).report  # the one-block floor keeps 16 instead
    assert not any(g.off_step_layers for g in floored.groups)


class GroupedWithin(nn.Module):
    """A 4-group conv whose inputs and outputs join one group: each group channel is 4 of `a`'s outputs (one per
    conv group), one column of `c`'s weight and 8 of `c`'s outputs (the residual add of cat([y, y]))."""

    def __init__(self, width=128, groups=4):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.c = nn.Conv2d(width, 2 * width, 3, groups=groups, padding=1)
        self.d = nn.Conv2d(2 * width, 10, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.d(self.c(y) + torch.cat([y, y], 1)).mean((2, 3))


@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.4, 0.6])
def test_round_to_puts_a_grouped_conv_within_groups_on_its_layer_widths(ratio):
    """round_to steps a layer's width, and a grouped conv reads G inputs per weight column: `a` keeps the
    multiple of 16 nearest to what was asked, every conv's widths are multiples of 16, and none is off its step."""
    model, x = GroupedWithin().eval(), (torch.randn(1, 3, 8, 8),)
    result = graphprune.prune_graph(model, x, ratio=ratio, round_to=16)
    (group,) = [g for g in result.report.groups if g.asked_before_rounding is not None]
    asked = 4 * group.asked_before_rounding  # a's channels
    kept = result.model.a.out_channels
    assert kept % 16 == 0 and abs(kept - asked) <= 8, (asked, kept)
    assert group.off_step_layers == 0
    c = result.model.c
    assert (c.groups, c.in_channels, c.out_channels) == (4, kept, 2 * kept)
    torch.testing.assert_close(result.model(*x), result.module(*x))
