"""Reference architectures (set B): exact torchvision parameter counts, output shapes, torch.fx traceability."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.fx
from torch import nn

from graphprune.models import convnext, efficientnet, mobilenet, regnet, shufflenet, vit
from graphprune.models.blocks import StochasticDepth

ALL_MODELS = (
    mobilenet.MODELS + efficientnet.MODELS + shufflenet.MODELS + regnet.MODELS + convnext.MODELS + vit.MODELS
)
BY_NAME = {name: (factory, shape) for name, factory, shape in ALL_MODELS}

# torchvision counts at the default configs (1000 classes); vit_tiny is our own test model.
EXPECTED_PARAMS = {
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "efficientnet_b0": 5_288_548,
    "shufflenet_v2_x1_0": 2_278_604,
    "regnet_y_400mf": 4_344_144,
    "convnext_tiny": 28_589_128,
    "vit_b_16": 86_567_656,
    "vit_tiny": 1_932_874,
}
EXPECTED_CLASSES = {name: 1000 for name in EXPECTED_PARAMS} | {"vit_tiny": 10}
NAMES = sorted(EXPECTED_PARAMS)


@functools.lru_cache(maxsize=None)
def _built(name: str):
    """Build once per session: (model in eval mode, was_training, input, eager output)."""
    factory, shape = BY_NAME[name]
    torch.manual_seed(0)
    model = factory()
    was_training = model.training
    model.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        y = model(x)
    return model, was_training, x, y


def test_models_tuple_names_and_shapes():
    names = [name for name, _, _ in ALL_MODELS]
    assert len(names) == len(set(names))
    assert set(names) == set(EXPECTED_PARAMS)
    for name, factory, shape in ALL_MODELS:
        assert callable(factory), name
        assert len(shape) == 4 and shape[0] == 1 and shape[1] == 3, (name, shape)


@pytest.mark.parametrize("name", NAMES)
def test_param_count(name):
    model, was_training, _, _ = _built(name)
    assert was_training, f"{name}: factory should return a model in train mode"
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_eval_forward_shape(name):
    _, _, _, y = _built(name)
    assert y.shape == (1, EXPECTED_CLASSES[name])
    assert torch.isfinite(y).all()
    # Untrained nets in eval mode must still give usable numbers, else parity checks at atol 1e-6 mean nothing.
    assert y.abs().max() > 1e-4, f"{name}: degenerate output, max |y| = {y.abs().max():.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_symbolic_trace_matches_eager(name):
    model, _, x, y = _built(name)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        y_traced = traced(x)
    assert y_traced.shape == y.shape
    assert torch.allclose(y_traced, y, atol=1e-6)


def test_num_classes_argument():
    for name in ("mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0", "regnet_y_400mf"):
        factory, _ = BY_NAME[name]
        last = [m for m in factory(num_classes=7).modules() if isinstance(m, nn.Linear)][-1]
        assert last.out_features == 7, name
    model = vit.vit_tiny(num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_vit_tiny_traced_dynamic_batch():
    model, _, _, _ = _built("vit_tiny")
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-6)


def test_stochastic_depth_traceable_in_train_mode():
    torch.manual_seed(0)
    sd = StochasticDepth(0.5)
    x = torch.randn(64, 4, 3, 3) + 10.0
    traced = torch.fx.symbolic_trace(sd)  # traced in train mode: the drop branch is recorded
    y = traced(x)
    per_sample = y.flatten(1)
    dropped = (per_sample == 0).all(dim=1)
    kept = torch.isclose(per_sample, x.flatten(1) * 2.0).all(dim=1)
    assert bool((dropped | kept).all())
    assert 0 < int(dropped.sum()) < 64
    sd.eval()
    assert torch.equal(torch.fx.symbolic_trace(sd)(x), x)
    assert torch.equal(StochasticDepth(0.0)(x), x)
