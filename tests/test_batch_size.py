"""Graphs captured by torch.export from a batch-1 example run on batches of any size.

The export frontend keeps dim 0 of the inputs symbolic (frontends.dynamic_batch): the pruned
GraphModule, the data-driven criteria's calibration runs and `result.exported` take a batch of 4.
Exactness: at batch 4 the pruned model equals the dense model whose dropped channels are zeroed
(graphprune.verify), so a shape constant baked to the example's batch, or a batch factor cut with
the heads, would fail. A model whose forward bakes the batch size is captured static, and a
calibration batch of another size gets one InputError naming both sizes.
"""
import operator

import numpy as np
import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune.errors import InputError, RewriteError
from graphprune.options import Calibration, Strategy
from graphprune.rules.movement import _scaled
from graphprune.trace import META_KEY, TensorMeta
from graphprune.verify import max_exactness_error

from conftest import randomize_norms

HEADS = 4


class FlattenCNN(nn.Module):
    """conv-BN-ReLU, conv-ReLU, flatten, linear head (export spells the flatten view(batch, C*H*W))."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 6 * 6, 5)

    def forward(self, x):
        x = F.relu(self.b(F.relu(self.bn(self.a(x)))))
        return self.fc(torch.flatten(x, 1))


class HeadsBlock(nn.Module):
    """A transformer block whose q, k, v are viewed by heads: view(b, n, heads, -1); MLP after."""

    def __init__(self, d=32, mlp=48):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, mlp), nn.Linear(mlp, d)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, HEADS, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        x = x + self.o(y)
        return x + self.fc2(F.relu(self.fc1(x)))


class MHABlock(nn.Module):
    """nn.MultiheadAttention, whose Core ATen graph views q, k, v as (length, batch * heads, head_dim)."""

    def __init__(self, d=32, mlp=48):
        super().__init__()
        self.attention = nn.MultiheadAttention(d, HEADS, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(d, mlp), nn.Linear(mlp, d)

    def forward(self, x):
        x = x + self.attention(x, x, x, need_weights=False)[0]
        return x + self.fc2(F.relu(self.fc1(x)))


class BakedBatch(nn.Module):
    """Flattens with x.view(1, -1): the forward itself only runs on a batch of 1."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.a(x))).view(1, -1))


SHAPES = {FlattenCNN: (3, 6, 6), HeadsBlock: (5, 32), MHABlock: (5, 32), BakedBatch: (3, 6, 6)}
OUTPUTS = {FlattenCNN: (5,), HeadsBlock: (5, 32), MHABlock: (5, 32)}


def _model_and_batch(cls, batch):
    model = randomize_norms(cls()).eval()
    return model, torch.randn(batch, *SHAPES[cls])


def _is_batch_dynamic(gm):
    return any(n.op == "call_function" and n.target is torch.ops.aten.sym_size.int for n in gm.graph.nodes)


@pytest.mark.parametrize("cls", [FlattenCNN, HeadsBlock, MHABlock])
def test_ratio_0_export_graph_of_a_batch_1_example_equals_the_dense_model_at_batch_4(cls):
    model, x = _model_and_batch(cls, 1)
    result = graphprune.prune_graph(model, x, ratio=0.0, frontend="export")
    assert result.report.frontend == "export" and _is_batch_dynamic(result.model)
    x4 = torch.randn(4, *SHAPES[cls])
    with torch.no_grad():
        torch.testing.assert_close(result.model(x4), model(x4), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(result.model(x), model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls", [FlattenCNN, HeadsBlock, MHABlock])
def test_pruned_export_graph_of_a_batch_1_example_is_exact_at_batch_4(cls):
    model, x = _model_and_batch(cls, 1)
    result = graphprune.prune_graph(model, x, ratio=0.5, frontend="export", target="none")
    pruned = {g: (result.plan.sizes[g], len(k)) for g, k in result.plan.keep.items() if len(k) < result.plan.sizes[g]}
    assert pruned, "the plan removes nothing: the test would prove nothing"
    if cls is not FlattenCNN:  # heads are pruned too: (b, n, heads, d) views, and (n, b * heads, d) for MHA
        assert any(size == HEADS for size, _ in pruned.values()), pruned
    x4 = torch.randn(4, *SHAPES[cls])
    with torch.no_grad():
        assert tuple(result.model(x4).shape) == (4, *OUTPUTS[cls])
    assert max_exactness_error(model, (x4,), result) <= 1e-5


CRITERIA = ["activation", "taylor", "wanda"]


def _mse(output, target):
    return F.mse_loss(output, target)


def _calibration(cls, batch, n=2):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, *SHAPES[cls], generator=g), torch.randn(batch, *OUTPUTS[cls], generator=g))
            for _ in range(n)]


def _kept(result):
    return sorted((result.plan.sizes[g], tuple(k)) for g, k in result.plan.keep.items())


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("cls", [FlattenCNN, HeadsBlock])
def test_data_driven_criteria_take_calibration_batches_of_4_with_a_batch_1_example(cls, criterion):
    """Scores from batch-4 calibration on the export graph equal those of the fx graph (which always ran any
    batch): the same channels are kept, and the pruned model runs at batch 4."""
    model, x = _model_and_batch(cls, 1)
    options = dict(ratio=0.5, target="none", importance=criterion, calibration=_calibration(cls, 4), loss_fn=_mse)
    by_export = graphprune.prune_graph(model, x, frontend="export", **options)
    by_fx = graphprune.prune_graph(model, x, frontend="fx", **options)
    assert by_export.report.frontend == "export" and by_export.plan.keep
    assert _kept(by_export) == _kept(by_fx)
    with torch.no_grad():
        assert tuple(by_export.model(torch.randn(4, *SHAPES[cls])).shape) == (4, *OUTPUTS[cls])


@pytest.mark.parametrize("criterion", ["activation", "wanda"])
def test_activation_statistics_of_a_batch_of_4_are_those_of_its_4_samples(criterion):
    """Mean |a| and ||X||_2 over one batch of 4 equal the same statistics over its samples given one by one."""
    model, x = _model_and_batch(FlattenCNN, 1)
    analysis = graphprune.analyse(model, x, frontend="export")
    batches = [(b,) for b, _ in _calibration(FlattenCNN, 4, n=1)]
    singles = [(b[i:i + 1],) for (b,) in batches for i in range(4)]
    together = analysis.scores(Strategy(importance=criterion), Calibration(batches))
    one_by_one = analysis.scores(Strategy(importance=criterion), Calibration(singles))
    for gid, scores in together.items():
        np.testing.assert_allclose(scores, one_by_one[gid], rtol=1e-5)
        assert not np.allclose(scores, scores[0])  # real statistics, not a constant


@pytest.mark.parametrize("cls", [FlattenCNN, HeadsBlock])
def test_exported_program_of_the_pruned_model_takes_batch_4(cls):
    model, x = _model_and_batch(cls, 1)
    result = graphprune.prune_graph(model, x, ratio=0.5, frontend="export", target="none")
    program = result.exported.module()
    x4 = torch.randn(4, *SHAPES[cls])
    with torch.no_grad():
        torch.testing.assert_close(program(x4), result.model(x4), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(program(x), result.model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_a_model_that_bakes_its_batch_size_gets_one_clear_error_for_calibration_of_another_size(criterion):
    model, x = _model_and_batch(BakedBatch, 1)
    analysis = graphprune.analyse(model, x, frontend="export")
    assert analysis.frontend.startswith("export (batch dim static: ")
    calibration = [(torch.randn(4, *SHAPES[BakedBatch]), torch.randn(1, 5))]
    with pytest.raises(InputError, match=r"calibration batch 0 has batch size 4, but the analysed graph takes "
                                         r"batch size 1 only: .*Fix: pass batches of batch size 1") as caught:
        graphprune.prune_graph(model, x, ratio=0.5, frontend="export", importance=criterion,
                               calibration=calibration, loss_fn=_mse)
    assert "view(1, -1)" in str(caught.value)
    ones = [(torch.randn(1, *SHAPES[BakedBatch]), torch.randn(1, 5)) for _ in range(2)]  # the fix works
    result = graphprune.prune_graph(model, x, ratio=0.5, frontend="export", importance=criterion,
                                    calibration=ones, loss_fn=_mse)
    assert result.plan.keep and max_exactness_error(model, (x,), result) <= 1e-5


def test_the_fx_frontend_names_a_baked_batch_size_when_its_run_fails():
    model, x = _model_and_batch(BakedBatch, 1)
    with pytest.raises(InputError, match=r"calibration batch 1 has batch size 4, .*running it failed"):
        graphprune.prune_graph(model, x, ratio=0.5, frontend="fx", importance="activation",
                               calibration=[(x,), (torch.randn(4, *SHAPES[BakedBatch]),)])


def test_batchnorm_recalibration_on_another_batch_size_names_it():
    model, x = _model_and_batch(BakedBatch, 1)
    with pytest.raises(InputError, match=r"calibration batch 0 \(recalibrate_bn\) has batch size 3, .*running it failed"):
        graphprune.prune_graph(model, x, ratio=0.5, frontend="fx", recalibrate_bn=True,
                               calibration=[(torch.randn(3, *SHAPES[BakedBatch]),)])


def _size_graph():
    graph = fx.Graph()
    x = graph.placeholder("x")
    x.meta[META_KEY] = TensorMeta((2, 5, 32), torch.float32)
    batch = graph.call_function(torch.ops.aten.sym_size.int, (x, 0))
    view = graph.call_function(torch.ops.aten.view.default, (x, [batch]))
    for node, value in ((batch, 2), (view, None)):
        node.meta[META_KEY] = value
    return graph, batch, view


def test_a_symbolic_size_on_the_channel_dim_keeps_its_batch_factor():
    """b * heads with 4 heads, 2 kept, recorded on a batch of 2 (8 -> 4): b * 2, a node, not the constant 4."""
    graph, batch, view = _size_graph()
    with graph.inserting_before(view):
        merged = graph.call_function(operator.mul, (batch, HEADS))
    merged.meta[META_KEY] = 2 * HEADS
    scaled = _scaled(view, merged, old=8, new=4)
    assert scaled.target is operator.mul and scaled.args == (batch, 2) and scaled.meta[META_KEY] == 4
    assert _scaled(view, merged, old=8, new=2) is batch  # one head kept: the batch itself


def test_a_symbolic_size_that_is_not_a_product_of_sizes_is_refused_not_guessed():
    graph, batch, view = _size_graph()
    with graph.inserting_before(view):
        shifted = graph.call_function(operator.add, (batch, 3))
    shifted.meta[META_KEY] = 5
    with pytest.raises(RewriteError, match="not a product of sizes"):
        _scaled(view, shifted, old=5, new=3)
