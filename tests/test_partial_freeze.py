"""Freezes per channel: a freeze that reaches only part of a group pins those channels; the rest stay prunable.

The models concatenate two convs into one group and split it again; only the second part reaches
something that must keep its channels (the model output through an `add`, an op without a rule).
Scores are adversarial where it matters (the pinned channels score lowest), so a planner that
ignored the pins would drop them. Every pruned model is checked in float64 against the dense model
with the dropped channels hidden from their consumers (graphprune.verify).
"""
import json

import numpy as np
import pytest
import torch
import torch.fx
import torch.nn as nn

import graphprune
from graphprune.cli import main as cli_main
from graphprune.errors import InputError
from graphprune.groups import Coupling, Freeze, Role, Slot, build_groups
from graphprune.planner import PrunePlan
from graphprune.verify import max_exactness_error, zero_dropped_inputs
from conftest import randomize_norms


class CatSplit(nn.Module):
    """One group of `a + b` channels (a writes the first `a`, b the last `b`); only the last `b` reach the output,
    through `q + skip(x)`. `mix`, when asked for, reads the whole group."""

    def __init__(self, a: int = 20, b: int = 10, mix: bool = False):
        super().__init__()
        self.sizes = [a, b]
        self.a, self.b = nn.Conv2d(3, a, 3, padding=1), nn.Conv2d(3, b, 3, padding=1)
        self.bn = nn.BatchNorm2d(a + b)
        self.head = nn.Conv2d(a, 8, 1)
        self.skip = nn.Conv2d(3, b, 1)
        self.mix = nn.Conv2d(a + b, 8, 1) if mix else None

    def forward(self, x):
        y = self.bn(torch.cat([self.a(x), self.b(x)], 1))
        p, q = torch.split(y, self.sizes, 1)
        outs = (self.head(torch.relu(p)), q + self.skip(x))
        return outs + (self.mix(torch.relu(y)),) if self.mix is not None else outs


def cumsum_over_channels(t):
    """No rule, and not channel-wise (probing rejects it): the channels it reads are frozen."""
    return torch.cumsum(t, 1)


torch.fx.wrap("cumsum_over_channels")


class SliceIntoUnknownOp(nn.Module):
    """Channels 20-29 of a 30-channel group are sliced into an op without a rule; `head` reads all 30."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 20, 3, padding=1), nn.Conv2d(3, 10, 3, padding=1)
        self.bn = nn.BatchNorm2d(30)
        self.head, self.tail = nn.Conv2d(30, 8, 1), nn.Conv2d(10, 4, 1)

    def forward(self, x):
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.head(y), self.tail(cumsum_over_channels(y[:, 20:]))


class TwoBlocks(nn.Module):
    """Two copies of CatSplit on one input: one partly frozen group per block, repeated layer by layer."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(CatSplit() for _ in range(2))

    def forward(self, x):
        return tuple(out for block in self.blocks for out in block(x))


class Hidden(nn.Module):
    """CatSplit plus a free 16-channel group (`hidden`) between head and the output."""

    def __init__(self):
        super().__init__()
        self.block = CatSplit()
        self.block.head = nn.Conv2d(20, 16, 1)
        self.out = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        h, q = self.block(x)
        return self.out(torch.relu(h)), q


def descending(group, model):
    """Scores n-1, ..., 0: the last channels of every group (the pinned ones here) score lowest."""
    return np.arange(group.size, dtype=np.float64)[::-1].copy()


X = torch.randn(2, 3, 8, 8)


def _prune(model, **options):
    model = randomize_norms(model).eval()
    result = graphprune.prune_graph(model, X, **{"ratio": 0.5, "importance": descending, "target": "none", **options})
    return model, result


def _exact(model, result):
    dense, pruned = model(X), result.model(X)
    assert [t.shape for t in dense] == [t.shape for t in pruned]  # outputs never change shape
    assert max_exactness_error(model, (X,), result) <= 1e-5


def _group_writing(graph, module):
    return next(g for g in graph.groups if any(s.name == f"{module}.weight" and s.dim == 0 for s in g.members))


def test_channels_that_reach_the_output_through_a_split_are_pinned_and_the_rest_pruned():
    model, result = _prune(CatSplit())
    group = _group_writing(result.graph, "a")
    assert group.size == 30 and group.prunable
    assert [(p.channels, p.reason) for p in group.pins] == [(tuple(range(20, 30)), "reaches model output through `add`")]
    # ratio 0.5 of the 20 free channels goes; the 10 pinned ones stay although they score lowest
    assert result.plan.keep[group.id] == tuple(range(10)) + tuple(range(20, 30))
    assert result.model.a.out_channels == 10 and result.model.head.in_channels == 10
    assert result.model.b.out_channels == 10 and result.model.skip.out_channels == 10
    _exact(model, result)


class OneChannelParts(nn.Module):
    """A fused projection split as multi-query attention splits its QKV: 8 "query" channels, then one "key" and one
    "value" channel, each broadcast over every query channel."""

    def __init__(self):
        super().__init__()
        self.fused = nn.Conv2d(3, 10, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        q, k, v = self.fused(x).split([8, 1, 1], 1)
        return self.head(torch.relu(q) * k + v)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_split_part_of_one_channel_pins_that_channel_alone(frontend):
    """The one-channel parts (lowest scores) are pinned, each by itself; half the query channels go."""
    model, result = _prune(OneChannelParts(), frontend=frontend)
    group = _group_writing(result.graph, "fused")
    assert group.size == 10 and group.prunable
    assert [p.channels for p in group.pins] == [(8,), (9,)]
    assert all("holds a single channel of its input in part" in p.reason for p in group.pins)
    assert result.plan.keep[group.id] == (0, 1, 2, 3, 8, 9)
    assert result.model.get_submodule("fused").weight.shape[0] == 6
    assert result.model.get_submodule("head").weight.shape[1] == 4
    _exact(model, result)


class OneChannelCuts(nn.Module):
    """OneChannelParts with the query, key and value channels cut out by indexing or narrow instead of a split."""

    CUTS = {"slice": lambda y: (y[:, :8], y[:, 8:9], y[:, 9:10]),
            "negative slice": lambda y: (y[:, :-2], y[:, -2:-1], y[:, -1:]),
            "ellipsis": lambda y: (y[:, :8], y[..., 8:9, :, :], y[:, 9:]),
            "list": lambda y: (y[:, :8], y[:, [8]], y[:, [9]]),
            "narrow": lambda y: (y.narrow(1, 0, 8), y.narrow(1, 8, 1), torch.narrow(y, 1, -1, 1)),
            "int": lambda y: (y[:, :8], y[:, 8].unsqueeze(1), y[:, -1, None]),
            "select": lambda y: (y[:, :8], y.select(1, 8).unsqueeze(1), torch.select(y, 1, -1).unsqueeze(1))}

    def __init__(self, cut: str):
        super().__init__()
        self.cut = self.CUTS[cut]
        self.fused = nn.Conv2d(3, 10, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        q, k, v = self.cut(self.fused(x))
        return self.head(torch.relu(q) * k + v)


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("cut", list(OneChannelCuts.CUTS))
def test_an_indexed_cut_of_one_channel_keeps_that_channel_and_prunes_the_rest(cut, frontend):
    """Slices (and narrows) of one channel pin it alone, as a split part does, and so does an int or a select, which
    drops the channel dim; a list of one position selects it.
    Every spelling prunes half the query channels, keeps the key and value channels (lowest scores), and runs
    exactly."""
    model, result = _prune(OneChannelCuts(cut), frontend=frontend, strict=True)
    group = _group_writing(result.graph, "fused")
    assert group.size == 10 and group.prunable
    if cut != "list":
        assert [p.channels for p in group.pins] == [(8,), (9,)]
        assert all("holds a single channel of its input" in p.reason for p in group.pins)
    kept = result.plan.keep[group.id]
    assert {8, 9} <= set(kept) and len(kept) <= 6
    assert result.model.get_submodule("fused").weight.shape[0] == len(kept)
    assert result.model.get_submodule("head").weight.shape[1] == len(kept) - 2
    _exact(model, result)


class PickedChannelsLast(nn.Module):
    """Channels last: a one-channel slice and a select of the last dim (negative) scale and shift a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.lin = nn.Linear(12, 5)

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 3, 1)
        return self.lin(y) * y[..., 5:6] + y.select(-1, 7).unsqueeze(-1)


class PickedNeurons(nn.Module):
    """A linear layer's neurons 7 (a one-neuron slice) and 0 (an int index) gate and shift the next layer's output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Linear(3 * 8 * 8, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.conv(x.flatten(1)))
        return self.head(h) * torch.sigmoid(h[:, 7:8]) + h[:, 0, None]


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("model, picked", [(PickedChannelsLast, {(5,), (7,)}), (PickedNeurons, {(7,), (0,)})])
def test_picked_channels_are_pinned_where_the_channel_dim_is_last_or_a_neuron(model, picked, frontend):
    """The picked channels stay, each pinned alone, and the rest of the group prunes to the ratio (exact)."""
    model, result = _prune(model(), frontend=frontend, strict=True)
    group = _group_writing(result.graph, "conv")
    assert group.prunable and {p.channels for p in group.pins} == picked
    kept = result.plan.keep[group.id]
    assert set().union(*picked) <= set(kept) and len(kept) <= group.size // 2 + len(picked)
    assert result.model.get_submodule("conv").weight.shape[0] == len(kept)
    _exact(model, result)


def test_l2_scores_keep_the_golden_count():
    model, result = _prune(CatSplit(), importance="l2")
    group = _group_writing(result.graph, "a")
    assert len(result.plan.keep[group.id]) == 20
    assert set(range(20, 30)) <= set(result.plan.keep[group.id])
    _exact(model, result)


def test_an_op_without_a_rule_on_a_slice_pins_only_the_slice():
    model, result = _prune(SliceIntoUnknownOp(), frontend="fx")
    group = _group_writing(result.graph, "a")
    assert [p.channels for p in group.pins] == [tuple(range(20, 30))]
    assert "has no rule" in group.pins[0].reason and "cumsum_over_channels" in group.pins[0].reason
    assert result.plan.keep[group.id] == tuple(range(10)) + tuple(range(20, 30))
    assert result.model.head.in_channels == 20 and result.model.tail.in_channels == 10
    _exact(model, result)


def test_round_to_8_rounds_the_free_channels_and_keeps_the_pinned_ones():
    """32 channels, 24 free (a) and 8 pinned (b): half the free ones go (12 kept), then a's layers round to
    the nearest multiple of 8 (12 -> 16): 16 + 8 = 24 kept, which `mix` (all 32 channels) reads on its step."""
    model, result = _prune(CatSplit(24, 8, mix=True), round_to=8, target="auto")
    group = _group_writing(result.graph, "a")
    kept = result.plan.keep[group.id]
    assert len(kept) == 24 and set(range(24, 32)) <= set(kept)
    report = next(g for g in result.report.groups if g.id == group.id)
    assert (report.asked_before_rounding, report.channels_after, report.round_step) == (20, 24, 8)
    assert result.model.a.out_channels == 16 and result.model.mix.in_channels == 24
    _exact(model, result)


def test_rounding_never_drops_a_pinned_channel_to_reach_a_step():
    """10 pinned channels: no kept count is on the step for both a (22 free) and mix (all 32). Half the free
    ones are asked (11 + 10 = 21); a's layers go down to 8 (11 is nearer 8 than 16), then mix's 18 down to 16,
    which only a's free channels can pay (6 left): the 10 pinned channels stay."""
    model, result = _prune(CatSplit(22, 10, mix=True), round_to=8, target="auto")
    kept = result.plan.keep[_group_writing(result.graph, "a").id]
    assert len(kept) == 16 and set(range(22, 32)) <= set(kept)
    _exact(model, result)


def test_global_scope_ranks_only_the_free_channels():
    """Free channels: 20 of the split group (channel i scores 29 - i, over the group's mean 14.5) and 16 of
    `hidden` (channel i scores 15 - i, mean 7.5). Half of the 36 go: the 18 lowest normalised scores are
    hidden's k/7.5 for k = 0..9 (up to 1.2: its channels 6-15) and the split group's s/14.5 for s = 10..17
    (up to 1.17: its channels 12-19); the next ones, 18/14.5 = 1.24 and 10/7.5 = 1.33, stay. The pinned
    channels 20-29 score lowest of all (0..9 / 14.5) and are never candidates."""
    model, result = _prune(Hidden(), scope="global")
    split_group = _group_writing(result.graph, "block.a")
    hidden = _group_writing(result.graph, "block.head")
    assert result.plan.keep[split_group.id] == tuple(range(12)) + tuple(range(20, 30))
    assert result.plan.keep[hidden.id] == tuple(range(6))
    _exact(model, result)


def test_uniform_layers_keep_each_copys_pins():
    model, result = _prune(TwoBlocks(), scope="global", uniform_layers=True)
    groups = [_group_writing(result.graph, f"blocks.{i}.a") for i in range(2)]
    assert [result.plan.keep[g.id] for g in groups] == [tuple(range(10)) + tuple(range(20, 30))] * 2
    _exact(model, result)


def test_the_plan_json_round_trip_keeps_the_pins_and_a_plan_that_drops_one_is_refused():
    model = randomize_norms(CatSplit()).eval()
    analysis = graphprune.analyse(model, X)
    result = graphprune.prune_graph(model, X, ratio=0.5, importance=descending, target="none")
    replayed = analysis.apply(result.plan.to_json())
    assert replayed.plan == result.plan
    assert replayed.report.params_after == result.report.params_after
    _exact(model, replayed)
    gid = _group_writing(analysis.dependencies, "a").id
    with pytest.raises(InputError, match="drops channels 25-29, which must be kept: reaches model output"):
        analysis.apply(PrunePlan({gid: tuple(range(25))}, {gid: 30}))


def test_the_report_and_explain_list_the_partial_freeze(capsys):
    _, result = _prune(CatSplit())
    report = result.report
    (partly,) = report.partly_frozen_groups
    assert not partly.frozen_reasons and partly.pinned_channels == 10
    assert (partly.channels_before, partly.channels_after) == (30, 20)
    assert report.prunable_channels == 20 and report.removed_channels == 10
    assert (f"partly frozen: group {partly.id} (30 -> 20 channels) channels 20-29 kept: "
            "reaches model output through `add`") in report.summary()
    written = next(g for g in json.loads(report.dumps())["groups"] if g["id"] == partly.id)
    assert written["pins"] == [{"channels": list(range(20, 30)), "reason": "reaches model output through `add`"}]
    assert partly.id not in {g.id for g in report.frozen_groups}

    assert cli_main(["explain", f"{__name__}:CatSplit", "--input-shape", "2,3,8,8", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "partly frozen: channels 20-29 kept: reaches model output through `add`" in printed
    assert "1 prunable (1 partly frozen" in printed


def test_ignoring_a_writer_freezes_the_partly_frozen_group_whole_with_both_reasons():
    _, result = _prune(CatSplit(), ignore=["a"])
    group = _group_writing(result.graph, "a")
    assert group.frozen and not group.pins
    assert group.frozen_reasons == ("reaches model output through `add`", "output channels kept by `ignore`")
    assert group.id not in result.plan.keep and not result.report.partly_frozen_groups


class PositionIds(nn.Module):
    """A position-ids buffer sliced to the input's length (to 8 when `length` is given) and read by an embedding:
    its unread entries belong to no layer, so pinning only the example's positions would shrink nothing but the
    buffer, and bake the example's length into the model."""

    def __init__(self, length: int | None = None):
        super().__init__()
        self.length = length
        self.register_buffer("position_ids", torch.arange(32).expand(1, -1).clone())
        self.tok, self.pos = nn.Embedding(100, 16), nn.Embedding(32, 16)
        self.fc1, self.fc2 = nn.Linear(16, 24), nn.Linear(24, 4)

    def forward(self, ids):
        h = self.tok(ids) + self.pos(self.position_ids[:, :self.length or ids.shape[1]])
        return self.fc2(torch.relu(self.fc1(h)))


def _position_ids_result(model, frontend):  # (fx folds the sliced buffer into a constant: export only)
    result = graphprune.prune_graph(model, torch.randint(0, 100, (2, 8)), ratio=0.5, target="none", frontend=frontend)
    assert not any(g.pins for g in result.graph.groups if any(s.name == "position_ids" for s in g.members))
    assert result.model.position_ids.shape == (1, 32)
    assert result.plan.keep  # the linear layers are still pruned
    return result


def test_a_sliced_buffer_that_no_layer_reads_beyond_the_slice_stays_frozen_whole():
    """build_groups on the slots of PositionIds: buffer -> get_attr -> slice [0, 8) frozen by the embedding. No weight
    sees channels 8-31, so the group freezes whole; with a layer reading all 32, channels 0-7 are pinned instead."""
    buffer, read, sliced = Slot("position_ids", 1, Role.BUFFER), Slot("position_ids", 1), Slot("slice_1", 1)
    sizes = {buffer: 32, read: 32, sliced: 8}
    couplings = [Coupling(buffer, read), Coupling(sliced, read, np.arange(8), np.arange(8))]
    freeze = Freeze(sliced, "`embedding` reads `slice_1` as row indices")
    order = {"position_ids": 0, "slice_1": 1}

    (group,) = build_groups(sizes, couplings, [freeze], order, {}).groups
    assert group.frozen_reasons == (freeze.reason,) and not group.pins

    weight = Slot("layer.weight", 1, Role.CONSUMER)
    graph = build_groups({**sizes, weight: 32}, couplings + [Coupling(read, weight)], [freeze], order, {})
    (group,) = graph.groups
    assert not group.frozen and [(p.channels, p.reason) for p in group.pins] == [(tuple(range(8)), freeze.reason)]
    assert graph.prunable_channels == 24


@pytest.mark.slow
def test_the_caller_class_keeps_every_sequence_length_with_a_sliced_position_buffer():
    model = PositionIds().eval()
    result = _position_ids_result(model, "export")
    longer = torch.randint(0, 100, (2, 32))  # the caller's class still takes every length the dense model takes
    reference = zero_dropped_inputs(model, result.graph, result.plan).eval()
    assert torch.allclose(result.module(longer), reference(longer), atol=1e-5)


class Concat(nn.Module):
    """Two convs concatenated into one 30-channel group that `head` reads whole: nothing freezes it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 20, 3, padding=1), nn.Conv2d(3, 10, 3, padding=1)
        self.bn = nn.BatchNorm2d(30)
        self.head = nn.Conv2d(30, 8, 1)

    def forward(self, x):
        return (self.head(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))),)


def test_ignoring_one_input_of_a_concat_pins_only_its_channels():
    model, result = _prune(Concat(), ignore=["b"])
    _exact(model, result)
    group = _group_writing(result.graph, "a")
    assert not group.frozen and [(p.channels, p.reason) for p in group.pins] == [
        (tuple(range(20, 30)), "output channels kept by `ignore`")]
    keep = result.plan.keep[group.id]
    assert set(range(20, 30)) <= set(keep) and len(keep) == 10 + 10  # a's 20 channels pruned by half
    assert (result.model.a.out_channels, result.model.b.out_channels) == (10, 10)
    assert [g.id for g in result.report.partly_frozen_groups] == [group.id]


def test_ignoring_every_writer_of_a_group_freezes_it_whole():
    model, result = _prune(Concat(), ignore=["a", "b"])
    group = _group_writing(result.graph, "a")
    assert group.frozen_reasons == ("output channels kept by `ignore`",) and not group.pins
    assert group.id not in result.plan.keep
