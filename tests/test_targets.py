"""Deployment targets: channel counts land on the runtime's block for each layer kind, never above the original."""
import platform

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.errors import InputError
from graphprune.groups import ChannelGroup, Role, Slot
from graphprune.rules import WeightedLayer
from graphprune.models import ZOO
from graphprune.runtimes.profiles import resolve_target
from graphprune.targets import LayerKind, Target, x86_block
from op_models import GroupedConv, example_input

BLOCK16 = Target("test16", dense_conv=16, grouped_conv=16, linear=8)


def _rounded_groups(report):
    return [g for g in report.groups if g.round_step > 1 and g.channels_after < g.channels_before]


@pytest.mark.parametrize("name, ratio", [("mobilenet_v2", 0.5), ("resnet18", 0.3), ("densenet121", 0.5)])
def test_channel_counts_land_on_the_block(name, ratio):
    spec = ZOO[name]
    model = spec.build()
    result = graphprune.prune_graph(model, spec.example_inputs(), ratio=ratio, target=BLOCK16)
    rounded = _rounded_groups(result.report)
    assert rounded
    for g in result.report.groups:
        assert g.channels_after <= g.channels_before  # never above the original
    for g in rounded:
        assert g.asked_before_rounding is not None and g.round_step == 16  # every rounding is stated
    original = dict(model.named_modules())
    checked = 0
    for name_, m in result.model.named_modules():  # dense and depthwise convs: every pruned count on the block
        if isinstance(m, nn.Conv2d) and (m.out_channels, m.in_channels) != (original[name_].out_channels,
                                                                          original[name_].in_channels):
            for now, before in ((m.out_channels, original[name_].out_channels), (m.in_channels, original[name_].in_channels)):
                if now != before and now >= 16:  # fewer than one block cannot be aligned without undoing pruning
                    assert now % 16 == 0, (name_, before, now)
                    checked += 1
    assert checked > 10


def test_split_blocks_are_aligned_where_the_split_allows():
    """ShuffleNetV2 ties each half of a split to the other through the shuffle: most layers still land on the block."""
    spec = ZOO["shufflenet_v2_x1_0"]
    model = spec.build()
    result = graphprune.prune_graph(model, spec.example_inputs(), ratio=0.5, target=BLOCK16)
    counts = [m.out_channels for n, m in result.model.named_modules()
              if isinstance(m, nn.Conv2d) and m.out_channels != model.get_submodule(n).out_channels]
    assert sum(c % 16 == 0 for c in counts) >= 0.85 * len(counts)  # measured: 42 of 47 on this model


def test_grouped_conv_step_counts_whole_groups():
    # GroupedConv's 3x3 conv has groups=4 over 16 inputs: 4 channels per group, so a block of 16 is 4 groups
    model = GroupedConv().eval()
    result = graphprune.prune_graph(model, example_input(GroupedConv), ratio=0.5, target=Target("g", 16, 16, 8))
    g = next(g for g in result.report.groups if g.channels_before == 4)  # the 4 conv groups
    assert g.round_step == 4


def test_linear_step():
    spec = ZOO["vit_tiny"]
    result = graphprune.prune_graph(spec.build(), spec.example_inputs(), ratio=0.3, target=BLOCK16)
    mlp = [g for g in result.report.groups if g.round_step == 8]
    assert mlp and all(g.channels_after % 8 == 0 for g in mlp if g.channels_after != g.asked_before_rounding)


def test_rounding_never_prunes_when_nothing_is_asked():
    spec = ZOO["resnet18"]
    result = graphprune.prune_graph(spec.build(), spec.example_inputs(), ratio=0.0, target=BLOCK16)
    assert result.report.params_after == result.report.params_before


def test_layer_kinds_come_from_the_rules():
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d(8), nn.Flatten(),
                          nn.Linear(8 * 3 * 3, 4))
    layers = graphprune.analyse(model.eval(), torch.randn(1, 4, 7, 7)).layers
    assert {w: layer.kind for w, layer in layers.items()} == \
        {"0.weight": LayerKind.DENSE_CONV, "1.weight": LayerKind.GROUPED_CONV, "4.weight": LayerKind.LINEAR}
    assert [layers[w].groups for w in ("0.weight", "1.weight", "4.weight")] == [1, 8, 1]


def test_target_names(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))  # no measured profile: "auto" is the hand-written rule
    assert x86_block() in (1, 8, 16)
    ort = resolve_target("ort-x86")
    assert ort.dense_conv == ort.grouped_conv == x86_block() and ort.linear == min(x86_block(), 8)
    assert resolve_target("none").dense_conv == 1 and resolve_target("xnnpack").linear == 1
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert resolve_target("auto") == ort
    with pytest.raises(InputError, match="unknown target 'tpu'"):
        resolve_target("tpu")


def test_one_block_keeps_narrow_layers_on_the_block():
    model = GroupedConv().eval()  # its first conv has 16 channels: ratio 0.5 would leave 8
    plain = graphprune.prune_graph(model, example_input(GroupedConv), ratio=0.5, target=Target("b", 16, 16, 8))
    wide = graphprune.prune_graph(model, example_input(GroupedConv), ratio=0.5,
                                  target=Target("b", 16, 16, 8, one_block=True))
    assert plain.model.get_submodule("a.0").out_channels == 8
    assert wide.model.get_submodule("a.0").out_channels == 16


def test_layers_on_the_same_channels_need_the_least_common_multiple_of_their_steps():
    """Six channels, 8 positions each in `a`'s rows and 3 each in `b`'s columns: with round_to=24, `a` lands on
    the step every 3 channels and `b` every 8, so the channels move by 24 at a time (the larger step, 8, breaks `a`)."""
    group = ChannelGroup("a:1", 6, {Slot("a.weight", 0, Role.PRODUCER): np.arange(48) // 8,
                                    Slot("b.weight", 1, Role.CONSUMER): np.arange(18) // 3})
    layers = {"a.weight": WeightedLayer(LayerKind.DENSE_CONV, ("a.weight",)),
              "b.weight": WeightedLayer(LayerKind.LINEAR, ("b.weight",))}
    ((channels, step),) = Target.uniform(24).constraints(group, layers)
    assert channels.tolist() == list(range(6)) and step == 24
