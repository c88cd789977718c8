"""Importance criteria on tiny hand-made layers whose expected ranking is known by construction."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune import magnitudes
from graphprune.errors import InputError
from graphprune.importance import APoZ, ActivationMean, BNScale, FlopsRegularized, Magnitude, Random, ScoringContext, Taylor
from graphprune.verify import max_exactness_error


class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1, bias=False)

    def forward(self, x):
        return self.b(F.relu(self.bn(self.a(x))))


def _setup(model, calibration=(), loss_fn=None):
    x = torch.randn(2, 2, 4, 4)
    analysis = graphprune.analyse(model, x)
    graph = analysis.dependencies
    group = next(g for g in graph.prunable if g.size == 4)
    ctx = ScoringContext(analysis.graph_module, graph, calibration, loss_fn, analysis.cost.channel_macs,
                         analysis.layer_inputs)
    return group, ctx


def test_magnitude_ranks_zeroed_channel_lowest_and_matches_formula():
    model = TwoConv()
    with torch.no_grad():
        model.a.weight[2].zero_()
        model.b.weight[:, 2].zero_()
    group, ctx = _setup(model)
    l1 = Magnitude(1)([group], ctx)[group.id]
    l2 = Magnitude(2)([group], ctx)[group.id]
    assert np.argmin(l1) == 2 and np.argmin(l2) == 2
    # channel 0: producer row a.weight[0], BN gamma/beta, consumer column b.weight[:, 0]
    expected = sum(t.abs().sum().item() for t in (model.a.weight[0], model.bn.weight[0], model.bn.bias[0], model.b.weight[:, 0]))
    assert l1[0] == pytest.approx(expected, rel=1e-6)


def test_bn_scale_follows_gamma():
    model = TwoConv()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.5, -2.0, 0.01, 1.0]))
    group, ctx = _setup(model)
    assert BNScale()([group], ctx)[group.id].tolist() == pytest.approx([0.5, 2.0, 0.01, 1.0])


def _calibration(n=3):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)) for _ in range(n)]


def test_taylor_matches_hand_computed_gradient_times_weight():
    model = TwoConv().eval()
    calibration = _calibration()
    loss_fn = lambda out, target: F.mse_loss(out, target)  # noqa: E731
    group, ctx = _setup(model, calibration, loss_fn)
    scores = Taylor()([group], ctx)[group.id]
    assert all(p.grad is None for p in ctx.model.parameters())  # gradients are cleaned up
    expected = np.zeros(4)
    for x, y in calibration:
        model.zero_grad()
        loss_fn(model(x), y).backward()
        per_channel = np.zeros(4)
        for p, dim in ((model.a.weight, 0), (model.bn.weight, 0), (model.bn.bias, 0), (model.b.weight, 1)):
            prod = (p.detach() * p.grad).movedim(dim, 0).reshape(4, -1).sum(1)
            per_channel += prod.double().numpy()
        expected += per_channel ** 2
    np.testing.assert_allclose(scores, expected / len(calibration), rtol=1e-5)


def test_apoz_and_activation_mean_rank_dead_channel_lowest():
    model = TwoConv()
    with torch.no_grad():
        model.bn.bias[1] = -100.0  # channel 1 never activates after the ReLU
    group, ctx = _setup(model, _calibration())
    apoz = APoZ()([group], ctx)[group.id]
    mean = ActivationMean()([group], ctx)[group.id]
    assert apoz[1] == 0.0 and np.argmin(apoz) == 1
    assert mean[1] == 0.0 and np.argmin(mean) == 1


def test_flops_regularised_prefers_expensive_channels_for_removal():
    group, ctx = _setup(TwoConv())
    cost = ctx.mac_cost(group)
    assert cost.shape == (4,) and (cost > 0).all()
    plain = Magnitude(2)([group], ctx)[group.id]
    reg = FlopsRegularized(Magnitude(2), lam=1.0)([group], ctx)[group.id]
    np.testing.assert_allclose(reg, plain / plain.mean() - cost / cost.mean())


def test_random_is_seeded():
    group, ctx = _setup(TwoConv())
    assert np.array_equal(Random(3)([group], ctx)[group.id], Random(3)([group], ctx)[group.id])


@pytest.mark.parametrize("name", ["taylor", "activation", "apoz"])
def test_data_driven_criterion_without_data(name):
    model = TwoConv()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError, match="calibration"):
        graphprune.prune_graph(model, torch.randn(2, 2, 4, 4), ratio=0.5, importance=name)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_every_named_criterion_prunes_end_to_end():
    model = TwoConv().eval()
    calibration = _calibration()
    for name in ("l1", "l2", "bn_scale", "taylor", "activation", "apoz", "random", "flops_l2"):
        r = graphprune.prune_graph(model, calibration[0][0], ratio=0.5, importance=name, calibration=calibration,
                                   loss_fn=lambda out, y: F.mse_loss(out, y))
        assert r.model.a.out_channels == 2, name


class BlurDownsample(nn.Module):
    """timm's anti-aliased downsampling: a fixed blur filter, a non-persistent buffer, is the weight of a depthwise
    functional conv after a learned one."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        blur = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (blur[:, None] * blur[None, :] / 16).expand(8, 1, 3, 3).clone(), persistent=False)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.pad(F.relu(self.conv(x)), [1, 1, 1, 1], mode="reflect")
        return self.head(F.conv2d(y, self.filt, stride=2, groups=8))


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_a_buffer_read_as_a_weight_is_sliced_but_not_scored(importance, frontend):
    """The blur filter's rows go with their channels; the scores are the learned weights' alone (Taylor needs
    gradients, which a buffer has none of; it used to fail on the buffer's name)."""
    torch.manual_seed(0)
    model, x = BlurDownsample().eval(), torch.randn(2, 3, 8, 8)
    data = {"calibration": [(x, torch.randn(2, 4, 4, 4))], "loss_fn": F.mse_loss} if importance == "taylor" else {}
    result = graphprune.prune_graph(model, x, ratio=0.5, importance=importance, target="none", frontend=frontend,
                                    strict=True, **data)
    (group,) = result.graph.prunable
    assert any(s.name == "filt" for s in group.members)
    assert result.model.get_buffer("filt").shape == (4, 1, 3, 3)
    scores = Magnitude(2)([group], ScoringContext(result.dense, result.graph)) if importance == "l2" else None
    if scores is not None:
        learned = sum(w.detach().pow(2).flatten(1).sum(1) for w in (model.conv.weight,)) + model.conv.bias.detach() ** 2
        learned = learned + model.head.weight.detach().pow(2).sum((0, 2, 3))
        np.testing.assert_allclose(scores[group.id], learned.sqrt().numpy(), rtol=1e-5)
    assert max_exactness_error(model, (x,), result) <= 1e-5


class SameShapeStack(nn.Module):
    """Runs of convolutions of one shape (stacked by the magnitude sums) at three sizes: under torch's one-thread
    reduction grain, several per grain, and one per grain."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.small = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in range(5)])
        self.widen = nn.Conv2d(8, 32, 1)
        self.mid = nn.Sequential(*[nn.Conv2d(32, 32, 3, padding=1) for _ in range(5)])
        self.widen2 = nn.Conv2d(32, 48, 1)
        self.large = nn.Sequential(*[nn.Conv2d(48, 48, 3, padding=1) for _ in range(4)])

    def forward(self, x):
        for block in (self.stem, self.small, self.widen, self.mid, self.widen2, self.large):
            x = F.relu(block(x))
        return x


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_of_stacked_weights_equals_each_weight_summed_alone(threads, p, monkeypatch):
    """Weights of one shape are powered and summed as one stacked tensor: every score equals, bit for bit, the sum of
    each weight's own per-channel sums (magnitudes.accumulate without precomputed sums)."""
    model = SameShapeStack()
    analysis = graphprune.analyse(model, torch.randn(1, 3, 8, 8))
    groups = analysis.dependencies.prunable
    ctx = ScoringContext(analysis.graph_module, analysis.dependencies)
    stacked, stacked_sums = [], magnitudes._stacked_sums
    monkeypatch.setattr(magnitudes, "_stacked_sums", lambda names, *a: stacked.append(len(names)) or
                        stacked_sums(names, *a))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        scores = Magnitude(p)(groups, ctx)
    finally:
        torch.set_num_threads(before)
    params = ctx.params()
    alone = {g.id: magnitudes.accumulate(g, params, p) ** (1.0 / p) for g in groups}
    assert stacked and max(stacked) > 1  # weights were stacked
    assert scores.keys() == alone.keys()
    assert all(np.array_equal(scores[gid], alone[gid]) for gid in scores)


def test_stacked_sums_on_several_threads_reduce_as_each_weight_alone():
    """On more than one thread torch may split a large reduction between threads, in another order than the one
    thread that reduces each small weight: runs of stacked weights stay under its grain (1, 4000, 3, 3 weights
    summed over dim 0 come out different in the last bit when three are stacked and reduced on two threads)."""
    g = torch.Generator().manual_seed(0)
    tensors = {f"w{k}": torch.randn(1, 4000, 3, 3, generator=g) for k in range(3)}
    names = list(tensors)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = magnitudes._runs(names, tensors)
        sums = {key: value for run in runs for key, value in magnitudes._stacked_sums(run, tensors, [0, 1], 2).items()}
        alone = {(name, dim): magnitudes.per_position(tensors[name], dim, 2) for name in names for dim in (0, 1)}
    finally:  # each weight alone on the same two threads: a 36,000-element sum differs in the last bit on one
        torch.set_num_threads(before)
    assert [name for run in runs for name in run] == names
    for key, expected in alone.items():
        assert np.array_equal(sums[key], expected)
