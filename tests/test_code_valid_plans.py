"""Code-valid plans: where the caller's code computes a split from the width (`chunk(2)`, `split(self.c)`), the
plan keeps equal counts in the parts, so `result.module` (the caller's own class, its code unchanged) rebuilds,
runs and equals `result.model`; exact in float64 against the dense model with the dropped channels hidden.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.eager import EagerRebuildError
from graphprune.models.shufflenet import ShuffleNetV2
from graphprune.models.yolo import YoloTiny
from graphprune.verify import max_exactness_error


class Conv(nn.Module):
    """ultralytics' Conv: conv, BN, SiLU (the C2f below reaches its tensors only through these)."""

    def __init__(self, c1, c2, k=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, 1, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True):
        super().__init__()
        self.cv1, self.cv2 = Conv(c1, c2, 3), Conv(c2, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """As ultralytics writes it (ultralytics/nn/modules/block.py); `self.c` is used nowhere in forward."""

    def __init__(self, c1, c2, n=1, shortcut=False, e=0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2fSplit(C2f):
    """ultralytics' C2f.forward_split, as its forward: the split sizes are the attribute `self.c`."""

    def forward(self, x):
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2fSplitSize(C2f):
    """`torch.split(x, self.c, 1)`: one split size, the attribute."""

    def forward(self, x):
        a, b = torch.split(self.cv1(x), self.c, 1)
        y = [a, b]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class Net(nn.Module):
    def __init__(self, block=C2f, shortcut=True):
        super().__init__()
        self.stem = Conv(3, 16, 3)
        self.block = block(16, 32, 1, shortcut)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def _kept_per_part(result, group):
    """Kept channels of `group` in each part of its (one) equal-counts constraint."""
    (constraint,) = group.equal_counts
    kept = np.array(result.plan.keep[group.id])
    return tuple(int(np.isin(kept, part).sum()) for part in constraint.parts)


def _rebuilds_exactly(model, x, result):
    module = result.module
    assert type(module) is type(model) and module is not model
    with torch.no_grad():
        torch.testing.assert_close(module(x), result.model(x), rtol=0, atol=1e-6)
    assert max_exactness_error(model, (x,), result) <= 1e-5
    return module


def _chunked_group(result):
    """The one group that carries an equal-counts constraint."""
    (group,) = [g for g in result.graph.groups if g.equal_counts]
    return group


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("shortcut", [True, False])
def test_c2f_as_ultralytics_writes_it_rebuilds_with_equal_halves(frontend, shortcut):
    torch.manual_seed(0)
    model, x = Net(C2f, shortcut).eval(), torch.randn(1, 3, 16, 16)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend=frontend)
    assert result.report.frontend.startswith(frontend)
    group = _chunked_group(result)
    (constraint,) = group.equal_counts
    assert [len(p) for p in constraint.parts] == [16, 16]
    assert "chunk" in constraint.where
    if frontend == "fx":
        assert "test_code_valid_plans.py" in constraint.where and ".chunk(2, 1)" in constraint.where
    assert _kept_per_part(result, group) == (8, 8)  # 16 of 32 kept by ratio 0.5, shared equally
    module = _rebuilds_exactly(model, x, result)
    assert module.block.cv1.conv.out_channels == 16 and module.block.m[0].cv1.conv.in_channels == 8


def test_c2f_keeps_equal_halves_on_a_channel_step():
    """ort-x86 steps (16 for convs): the halves stay equal and cv1 stays on its step."""
    model, x = Net(C2f, True).eval(), torch.randn(1, 3, 16, 16)
    result = graphprune.prune_graph(model, x, ratio=0.5, round_to=8, frontend="fx")
    group = _chunked_group(result)
    first, second = _kept_per_part(result, group)
    assert first == second and (first + second) % 8 == 0
    _rebuilds_exactly(model, x, result)


def _second_half_first(group, model):
    """Scores that favour the second chunk's channels over the first's, and tie-break by position: keeping the best
    channels alone would keep nearly all of one half and none of the other."""
    scores = np.linspace(0.0, 0.1, group.size)
    for constraint in group.equal_counts:
        scores[constraint.parts[1]] += 1.0
    return scores


def test_unequal_scores_still_give_equal_halves_and_every_layer_on_its_step():
    """Scores lopsided toward one half: the halves are made equal, then every layer goes to its step within the
    count asked (an earlier order of those two left a layer below its step here; YOLOv8n: test_ultralytics)."""
    torch.manual_seed(0)
    model, x = Net(C2f, shortcut=False).eval(), torch.randn(1, 3, 16, 16)
    result = graphprune.prune_graph(model, x, ratio=0.5, round_to=8, importance=_second_half_first, frontend="fx")
    first, second = _kept_per_part(result, _chunked_group(result))
    assert first == second
    module = _rebuilds_exactly(model, x, result)
    widths = {name: m.out_channels for name, m in module.named_modules() if isinstance(m, nn.Conv2d)}
    assert widths.pop("head") == 4 and all(w % 8 == 0 for w in widths.values()), widths


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("block", [C2fSplit, C2fSplitSize])
def test_split_by_attribute_keeps_equal_parts_and_updates_the_attribute(block, frontend):
    torch.manual_seed(0)
    model, x = Net(block, False).eval(), torch.randn(1, 3, 16, 16)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend=frontend)
    group = _chunked_group(result)
    assert _kept_per_part(result, group) == (8, 8)
    module = _rebuilds_exactly(model, x, result)
    assert module.block.c == 8 and model.block.c == 16  # the attribute follows; the caller's model is untouched


class Res2NetFirstBlock(nn.Module):
    """timm's Res2Net first block, in short: `split(self.width)` into scales, a conv on each but the last, the last
    read from the end (`spx[-1]`) and pooled, all concatenated."""

    def __init__(self, width=8, scales=3):
        super().__init__()
        self.width = width
        self.conv1 = nn.Conv2d(4, width * scales, 1)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(scales - 1))
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.conv3 = nn.Conv2d(width * scales, 4, 1)

    def forward(self, x):
        spx = torch.split(torch.relu(self.conv1(x)), self.width, 1)
        spo = [torch.relu(conv(spx[i])) for i, conv in enumerate(self.convs)]
        return self.conv3(torch.cat(spo + [self.pool(spx[-1])], 1))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_split_part_read_from_the_end_carries_its_channels(frontend):
    """`spx[-1]` is part 2 of 3: its channels are conv1's last third, so conv1, the convs and conv3's columns are one
    group, pruned together (the negative index was once read as no part: its channels were planned apart from
    conv1's and the rewrite broke)."""
    torch.manual_seed(0)
    model, x = Res2NetFirstBlock().eval(), torch.randn(1, 4, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend=frontend, strict=True)
    (group,) = [g for g in result.graph.groups if g.prunable]
    assert group.size == 3 * 8 + 2 * 8 and _kept_per_part(result, group) == (4, 4, 4)
    assert result.model.get_submodule("conv3").weight.shape[1] == 3 * 4
    module = _rebuilds_exactly(model, x, result)
    assert module.width == 4 and model.width == 8


def test_shufflenet_from_the_zoo_rebuilds_its_eager_module():
    torch.manual_seed(0)
    model, x = ShuffleNetV2((2, 2, 2), (8, 16, 32, 64, 64), num_classes=10).eval(), torch.randn(1, 3, 64, 64)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="fx")
    constrained = [g for g in result.graph.groups if g.equal_counts]
    assert len(constrained) == 3  # one group per stage, whose stride-1 unit chunks it
    for group in constrained:
        kept = np.array(result.plan.keep[group.id])
        for c in group.equal_counts:
            counts = [int(np.isin(kept, p).sum()) for p in c.parts]
            assert counts == [len(c.parts[0]) // 2] * 2, (group.id, counts)
    module = _rebuilds_exactly(model, x, result)
    unit = module.stage3[1]
    assert unit.branch2[0].in_channels == unit.branch2[-3].out_channels  # x2 is as wide as branch2's output


def test_yolo_zoo_model_with_c2f_rebuilds():
    torch.manual_seed(0)
    model, x = YoloTiny(num_classes=2, width=4).eval(), torch.randn(1, 3, 64, 64)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="fx")
    constrained = [g for g in result.graph.groups if g.equal_counts]
    assert len(constrained) == 8  # the eight C2f blocks
    for group in constrained:
        (c,) = group.equal_counts
        kept = np.array(result.plan.keep[group.id])
        assert int(np.isin(kept, c.parts[0]).sum()) == int(np.isin(kept, c.parts[1]).sum())
    module = result.module
    assert type(module) is YoloTiny
    with torch.no_grad():
        for got, want in zip(module(x), result.model(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert max_exactness_error(model, (x,), result) <= 1e-5


class Tangled(nn.Module):
    """chunk(2) whose first half holds each of its channels twice (`a[:, :2] + a[:, 2:]`), the second once."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(3, 8, 1)
        self.out = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        a, b = self.inp(x).chunk(2, 1)
        return self.out(torch.cat([a[:, :2] + a[:, 2:], b], 1))


class Shared(nn.Module):
    """chunk(2) whose halves share two channels (`a[:, :2] + b[:, :2]`): the others keep equal counts."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(3, 8, 1)
        self.out = nn.Conv2d(10, 4, 1)

    def forward(self, x):
        a, b = self.inp(x).chunk(2, 1)
        return self.out(torch.cat([a, b, a[:, :2] + b[:, :2]], 1))


def test_a_chunk_whose_parts_share_channels_unevenly_freezes_its_group_naming_the_chunk():
    model, x = Tangled().eval(), torch.randn(1, 3, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="fx")
    (group,) = [g for g in result.graph.groups if any(s.name == "inp.weight" and s.dim == 0 for s in g.members)]
    assert group.frozen and group.id not in result.plan.keep
    (reason,) = group.frozen_reasons
    assert "`chunk` (Tensor.chunk)" in reason and "a, b = self.inp(x).chunk(2, 1)" in reason
    assert "hold the group's channels unevenly" in reason
    assert type(result.module) is Tangled


def test_channels_both_halves_share_count_alike():
    torch.manual_seed(0)
    model, x = Shared().eval(), torch.randn(1, 3, 8, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="fx")
    (group,) = [g for g in result.graph.groups if any(s.name == "inp.weight" and s.dim == 0 for s in g.members)]
    (constraint,) = group.equal_counts
    assert [len(p) for p in constraint.parts] == [2, 2]  # the shared two are in neither part
    assert not group.frozen
    _rebuilds_exactly(model, x, result)


class Thirds(nn.Module):
    """chunk(3) of 8 channels gives 3, 3, 2: no equal-counts constraint describes it."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(3, 8, 1)
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(2, 4, 1)

    def forward(self, x):
        p, q, r = self.inp(x).chunk(3, 1)
        return self.a(p) + self.b(q) + self.c(r)


def test_an_unknown_split_constraint_fails_naming_the_chunk_line_not_the_conv():
    model, x = Thirds().eval(), torch.randn(1, 3, 8, 8)
    analysis = graphprune.analyse(model, x, frontend="fx")
    (group,) = [g for g in analysis.dependencies.groups if any(s.name == "inp.weight" and s.dim == 0 for s in g.members)]
    assert not group.equal_counts
    plan = graphprune.PrunePlan({group.id: (0, 1, 3, 4, 5, 6)}, {group.id: 8})  # parts keep 2, 3, 1
    result = analysis.apply(plan)
    assert max_exactness_error(model, (x,), result) <= 1e-5  # the graph itself is right
    with pytest.raises(EagerRebuildError) as caught:
        _ = result.module
    message = str(caught.value)
    assert message.index("p, q, r = self.inp(x).chunk(3, 1)") < message.index("on the example inputs")
    assert "splits 8 channels into [3, 3, 2]" in message and "keeps [2, 3, 1]" in message


def test_a_hand_made_plan_with_unequal_halves_names_the_chunk():
    model, x = Net(C2f, True).eval(), torch.randn(1, 3, 16, 16)
    analysis = graphprune.analyse(model, x, frontend="fx")
    group = next(g for g in analysis.dependencies.groups if g.equal_counts)
    plan = graphprune.PrunePlan({group.id: tuple(range(10)) + tuple(range(16, 22))}, {group.id: 32})  # 10 and 6
    with pytest.raises(EagerRebuildError, match=r"`chunk` \(Tensor\.chunk\) at \S+test_code_valid_plans\.py:\d+ "
                                                r"in forward: `y = list\(self\.cv1\(x\)\.chunk\(2, 1\)\)` splits 32 "
                                                r"channels into \[16, 16\].*keeps \[10, 6\]"):
        _ = analysis.apply(plan).module


class _ChunkWithAPinnedHalf(torch.nn.Module):
    """chunk(2) after a conv, and the first 3 channels of the second half are also a model output: those are
    pinned, while the code still needs both halves to keep equal counts."""

    def __init__(self):
        super().__init__()
        self.cv1 = torch.nn.Conv2d(3, 16, 1)
        self.cv2 = torch.nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a, b = self.cv1(x).chunk(2, 1)
        return self.cv2(torch.cat([a, b], 1)), b[:, :3]


def test_equal_parts_keep_the_channels_a_partial_freeze_pins():
    torch.manual_seed(0)
    model = _ChunkWithAPinnedHalf().eval()
    with torch.no_grad():
        model.cv1.weight[8:11] *= 1e-3  # the pinned channels score lowest
    x = torch.randn(1, 3, 4, 4)
    result = graphprune.prune_graph(model, x, ratio=0.75, target="none")
    (group,) = [g for g in result.graph.prunable if g.equal_counts]
    assert list(group.pinned) == [8, 9, 10]
    kept = result.plan.keep[group.id]
    assert {8, 9, 10} <= set(kept) and len([c for c in kept if c < 8]) == len([c for c in kept if c >= 8]) == 3
    module = result.module
    with torch.no_grad():
        for got, want in zip(module(x), result.model(x)):
            torch.testing.assert_close(got, want)
