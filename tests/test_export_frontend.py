"""The torch.export (Core ATen) frontend: same groups as fx on the zoo, exact pruning, every spelling alike.

Protocol: export -> analyse with `aten_rules` -> L2 scores -> local plan -> ShrinkChannels ->
EliminateDeadCode; the pruned export graph must keep output shapes and equal, in float64,
the unpruned graph whose consumer weights of the dropped channels are zeroed.
"""
import copy
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
import graphprune.models

from graphprune.batch import BATCH_KEY
from graphprune.dependencies import build_dependency_graph as analyse
from graphprune.errors import TraceError
from graphprune.frontends import export_graph, flat_inputs
from graphprune.importance import ScoringContext, resolve, score_groups
from graphprune.models import get_model
from graphprune.passes import EliminateDeadCode, ShrinkChannels
from graphprune.planner import plan_local
from graphprune.rules import default_rules
from graphprune.rules.aten import aten_rules
from graphprune.copies import clone_module
from graphprune.trace import record_values, trace
from graphprune.verify import max_exactness_error
from conftest import randomize_norms

FAST = ("resnet18", "vit_tiny")  # export + decomposition costs 5-40 s per model on 2 cores: the rest is slow
SLOW = ("mobilenet_v2", "shufflenet_v2_x1_0", "densenet121", "convnext_tiny", "yolo_tiny", "efficientnet_b0")
NORMALISING = "native_layer_norm"  # groups through a LayerNorm over channels are valid but not exact


def prune_exported(gm, inputs, ratio=0.5, rules=None):
    """Analyse, score (L2), plan (local ratio) and rewrite a copy of an exported graph."""
    rules = rules or aten_rules()
    graph = analyse(gm, rules)
    scores = score_groups(graph.prunable, resolve("l2"), ScoringContext(gm, graph))
    plan = plan_local(graph, scores, ratio).plan
    pruned = copy.deepcopy(gm)
    ShrinkChannels(graph, plan, rules, inputs)(pruned)
    EliminateDeadCode(inputs)(pruned)
    return SimpleNamespace(model=pruned, plan=plan, graph=graph)


def fx_analysis(model, inputs):
    rules = default_rules()
    gm = trace(clone_module(model), rules.has_module_rule).eval()
    record_values(gm, inputs)
    return analyse(gm, rules)


def _shapes(out):
    return [t.shape for t in out] if isinstance(out, (tuple, list)) else [out.shape]


def _passes_norm_over_channels(gm, group) -> bool:
    norms = {n.name for n in gm.graph.nodes if n.op == "call_function" and NORMALISING in str(n.target)}
    return any(u.name in norms for n in gm.graph.nodes if any(s.name == n.name for s in group.members) for u in n.users)


def check_zoo_model(name):
    spec = get_model(name)
    model = randomize_norms(spec.build()).eval()
    inputs = spec.example_inputs()
    gm = export_graph(model, inputs)
    graph = analyse(gm, aten_rules())
    reference = fx_analysis(model, inputs)
    assert Counter(g.size for g in graph.prunable) == Counter(g.size for g in reference.prunable)
    assert len(graph.frozen) == len(reference.frozen)

    result = prune_exported(gm, inputs)
    before = sum(p.numel() for p in gm.parameters())
    after = sum(p.numel() for p in result.model.parameters())
    assert after < before
    with torch.no_grad():
        assert _shapes(result.model(*inputs)) == _shapes(gm(*inputs))
    exact_ids = {g.id for g in graph.prunable if not _passes_norm_over_channels(gm, g)}
    if exact_ids != set(result.plan.keep):  # rebuild with the exact groups only
        keep = {gid: k for gid, k in result.plan.keep.items() if gid in exact_ids}
        plan = type(result.plan)(keep, {gid: result.plan.sizes[gid] for gid in keep})
        result = _apply(gm, inputs, graph, plan)
    if result.plan.keep:
        assert max_exactness_error(gm, inputs, result) <= 1e-5


def _apply(gm, inputs, graph, plan, rules=None):
    rules = rules or aten_rules()
    pruned = copy.deepcopy(gm)
    ShrinkChannels(graph, plan, rules, inputs)(pruned)
    EliminateDeadCode(inputs)(pruned)
    return SimpleNamespace(model=pruned, plan=plan, graph=graph)


@pytest.mark.parametrize("name", FAST)
def test_zoo_export_matches_fx_and_prunes_exactly(name):
    check_zoo_model(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_zoo_export_matches_fx_and_prunes_exactly_slow(name):
    check_zoo_model(name)


# -- spellings -------------------------------------------------------------------------------------------------


class FunctionalBatchNorm(nn.Module):
    """Batch norm written with F.batch_norm, as library layers do."""

    def __init__(self, channels):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, 1e-5)


def drop_path(x, p: float, training: bool):
    """Stochastic depth: the identity in eval mode."""
    if not training or p == 0.0:
        return x
    keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= p
    return x * keep / (1 - p)


class Block(nn.Module):
    def __init__(self, cin, cout, norm, residual):
        super().__init__()
        self.conv, self.norm, self.residual = nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm(cout), residual

    def forward(self, x):
        y = F.relu(self.norm(self.conv(x)))
        return x + drop_path(y, 0.2, self.training) if self.residual else y


class Net(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.blocks = nn.Sequential(Block(3, 16, norm, False), Block(16, 32, norm, False), Block(32, 32, norm, True))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.blocks(x).mean((2, 3)))


def _spelled(norm):
    torch.manual_seed(0)
    net = Net(norm)
    with torch.no_grad():  # the same non-trivial norm parameters whatever the spelling
        g = torch.Generator().manual_seed(5)
        for m in net.modules():
            if hasattr(m, "running_var"):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


def test_spellings_prune_to_the_same_model():
    x = torch.randn(2, 3, 16, 16)
    kept, shapes = [], []
    for norm in (nn.BatchNorm2d, FunctionalBatchNorm):
        model = _spelled(norm)
        gm = export_graph(model, (x,))
        result = prune_exported(gm, (x,))
        assert max_exactness_error(gm, (x,), result) <= 1e-5
        kept.append(sorted((result.plan.sizes[g], len(k)) for g, k in result.plan.keep.items()))
        shapes.append([tuple(p.shape) for p in result.model.parameters()])
    assert kept[0] == kept[1] and len(kept[0]) == 2  # (16 -> 8) and the residual stage (32 -> 16)
    assert shapes[0] == shapes[1]
    fx_groups = fx_analysis(_spelled(FunctionalBatchNorm), (x,))
    assert len(fx_groups.prunable) == 2  # fx follows F.batch_norm too (rules/norms.py)


def test_export_keeps_the_callers_model_and_optional_arguments():
    class WithOptional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x, skip=None, scale: float = 2.0):
            y = F.relu(self.bn(self.conv(x))) * scale
            return y + skip if skip is not None else y

    model = WithOptional().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, skip = torch.randn(1, 3, 8, 8), torch.randn(1, 8, 8, 8)
    gm = export_graph(model, (x,))  # `skip` and `scale` keep their defaults
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(gm(x), model.eval()(x))
    gm2 = export_graph(model, (x,), {"skip": skip})
    assert len(flat_inputs(gm2, (x,), {"skip": skip})) == 2
    with torch.no_grad():
        assert torch.equal(gm2(x, skip=skip), model(x, skip=skip))


def test_export_failure_is_a_trace_error():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x[x > 0].sum() if x.sum() > 0 else x  # control flow on a tensor value

    with pytest.raises(TraceError, match="torch.export cannot export DataDependent"):
        export_graph(DataDependent(), (torch.randn(4),))


class CachingHead(nn.Module):
    """YOLO's Detect in small: forward caches its input's shape and a grid built from it (`self.shape`,
    `self.grid`) and rebuilds them when the shape changes. A trace leaves symbolic sizes there, which no later
    trace or run can use (Detect's `self.shape != shape` then raised GuardOnDataDependentSymNode): here the
    forward refuses them outright. The cache starts as class attributes, as Detect's does (torch.export puts back
    the instance attributes a trace assigns, not those it adds)."""

    shape, grid = None, None

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        if self.shape is not None and not all(type(d) is int for d in self.shape):
            raise RuntimeError(f"sizes left by another trace: {self.shape}")
        y = self.conv(x)
        if self.shape != y.shape:
            self.grid = torch.arange(y.shape[2] * y.shape[3], dtype=y.dtype).view(1, 1, y.shape[2], y.shape[3])
            self.shape = y.shape
        return y + self.grid


class WithCachingHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 8, 3, padding=1), CachingHead()

    def forward(self, x):
        return self.head(torch.relu(self.stem(x)))


def test_every_export_attempt_runs_on_a_fresh_copy_of_a_model_that_caches_shapes():
    torch.manual_seed(0)
    model, x = WithCachingHead().eval(), torch.randn(1, 3, 8, 8)  # never run: the first trace fills the cache
    gm = export_graph(model, (x,))
    assert "shape" not in vars(model.head)  # the caller's model is untouched
    assert gm.meta[BATCH_KEY].static == ""  # the batch dim stayed dynamic: checked by a run on a clean copy
    with torch.no_grad():
        torch.testing.assert_close(gm(torch.cat([x, x])), torch.cat([model(x)] * 2))
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="export")
    assert result.report.params_after < result.report.params_before
    with torch.no_grad():
        torch.testing.assert_close(result.module(x), result.model(x))


SAME_COUNTS_FAST = ("resnet18", "vit_tiny")
SAME_COUNTS_SLOW = ("mobilenet_v2", "densenet121", "shufflenet_v2_x1_0", "convnext_tiny", "efficientnet_b0",
                    "googlenet", "regnet_y_400mf", "squeezenet1_1", "unet", "yolo_tiny", "resnet56")


@pytest.mark.parametrize("name", list(SAME_COUNTS_FAST) + [pytest.param(n, marks=pytest.mark.slow) for n in SAME_COUNTS_SLOW])
def test_both_frontends_prune_a_zoo_model_to_the_same_counts(name):
    """The plan through fx and through export removes the same channels: equal measured params and MACs."""
    spec = graphprune.models.get_model(name)
    model, x = spec.build(), spec.example_inputs()
    by_fx = graphprune.prune_graph(model, x, ratio=0.5, frontend="fx")
    by_export = graphprune.prune_graph(model, x, ratio=0.5, frontend="export")
    assert by_export.report.frontend == "export" and by_fx.report.frontend == "fx"
    assert (by_export.report.params_before, by_export.report.macs_before) == (
        by_fx.report.params_before, by_fx.report.macs_before)
    assert (by_export.report.params_after, by_export.report.macs_after) == (
        by_fx.report.params_after, by_fx.report.macs_after)
    with torch.no_grad():
        shapes = [[t.shape for t in torch.utils._pytree.tree_leaves(r.model(*x))] for r in (by_export, by_fx)]
    assert shapes[0] == shapes[1]


class NormOverSpace(nn.Module):
    """LayerNorm over (H, W) of NCHW channels, or over (W, C) of NHWC ones (`channels_last`)."""

    def __init__(self, channels_last: bool = False):
        super().__init__()
        self.channels_last = channels_last
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
        self.norm = nn.LayerNorm([4, 8] if channels_last else [4, 4])

    def forward(self, x):
        y = self.conv(x)
        if self.channels_last:
            return self.head(self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return self.head(self.norm(y))


def test_export_rules_freeze_with_a_reason_where_they_do_not_follow():
    """The ATen layer-norm rule freezes a norm over more than the last dim that spans the channels."""
    model, x = NormOverSpace(channels_last=True).eval(), torch.randn(1, 3, 4, 4)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="export")
    reasons = [r for g in result.report.frozen_groups for r in g.frozen_reasons]
    assert any("normalises over 2 dims" in r for r in reasons), reasons
    assert result.model(x).shape == model(x).shape


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_layer_norm_over_space_passes_the_channels_exactly(frontend):
    """LayerNorm over (H, W) normalises every channel's map on its own, with one (H, W) weight: channels pass through
    (exact in float64), the weight is kept whole."""
    from graphprune.verify import max_exactness_error
    model, x = randomize_norms(NormOverSpace()).eval(), torch.randn(1, 3, 4, 4)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend=frontend)
    assert result.report.params_after < result.report.params_before and not result.report.renormalised
    assert tuple(result.model.get_parameter("norm.weight").shape) == (4, 4)
    assert max_exactness_error(model, (x,), result) <= 1e-5
