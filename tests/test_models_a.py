"""Reference CNN zoo (part A): parameter counts, output shapes, torch.fx traceability and eager/traced parity."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from graphprune.models import densenet, googlenet, resnet, squeezenet, unet, vgg, yolo

ALL_MODELS = (
    resnet.MODELS + vgg.MODELS + densenet.MODELS + googlenet.MODELS + squeezenet.MODELS + unet.MODELS + yolo.MODELS
)
BY_NAME = {name: (factory, shape) for name, factory, shape in ALL_MODELS}

# torchvision's default-config counts (1000 classes) for the ImageNet models; resnet56, unet and
# yolo_tiny have no torchvision counterpart: their counts were computed once and are pinned here.
EXPECTED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
    "resnet56": 855_770,  # CIFAR ResNet-56, 10 classes, option-B (1x1 conv + BN) shortcuts
    "vgg16_bn": 138_365_992,
    "densenet121": 7_978_856,
    "googlenet": 6_624_904,  # no auxiliary heads
    "squeezenet1_1": 1_235_496,
    "unet": 7_732_354,  # base width 32, 4 levels + 512-ch bottleneck, 2 classes
    "yolo_tiny": 3_149_581,  # width 16, 80 classes, 3 anchors, 3 scales
}

EXPECTED_OUT_SHAPES = {
    "resnet18": [(1, 1000)],
    "resnet50": [(1, 1000)],
    "resnext50_32x4d": [(1, 1000)],
    "wide_resnet50_2": [(1, 1000)],
    "resnet56": [(1, 10)],
    "vgg16_bn": [(1, 1000)],
    "densenet121": [(1, 1000)],
    "googlenet": [(1, 1000)],
    "squeezenet1_1": [(1, 1000)],
    "unet": [(1, 2, 128, 128)],
    "yolo_tiny": [(1, 255, 32, 32), (1, 255, 16, 16), (1, 255, 8, 8)],
}

NAMES = list(EXPECTED_PARAMS)


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def test_models_tuples_cover_every_name():
    assert [name for name, _, _ in ALL_MODELS] == NAMES
    for name, factory, shape in ALL_MODELS:
        assert callable(factory), name
        assert len(shape) == 4 and shape[0] == 1, name
        assert factory.__doc__ and "\n" not in factory.__doc__.strip(), f"{name}: one-line docstring"


def _graph_targets(gm: torch.fx.GraphModule) -> set:
    out = set()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            out.add(type(gm.get_submodule(node.target)))
        elif node.op in ("call_function", "call_method"):
            out.add(node.target)
    return out


def test_unet_and_yolo_use_required_ops():
    import torch.nn.functional as F

    u = _graph_targets(torch.fx.symbolic_trace(unet.unet()))
    assert {nn.ConvTranspose2d, F.interpolate, torch.cat, nn.MaxPool2d} <= u
    y = _graph_targets(torch.fx.symbolic_trace(yolo.yolo_tiny()))
    assert {nn.Upsample, nn.SiLU, torch.cat, "chunk"} <= y


def test_dense_and_inception_concat_in_graph():
    d = torch.fx.symbolic_trace(densenet.densenet121())
    assert sum(1 for n in d.graph.nodes if n.target is torch.cat) == 58 + 4  # one per dense layer + per block
    g = torch.fx.symbolic_trace(googlenet.googlenet())
    assert sum(1 for n in g.graph.nodes if n.target is torch.cat) == 9


@pytest.mark.parametrize(
    "factory,num_classes,shape,expected",
    [
        (resnet.resnet56, 100, (1, 3, 32, 32), [(1, 100)]),
        (squeezenet.squeezenet1_1, 7, (1, 3, 224, 224), [(1, 7)]),
        (unet.unet, 7, (1, 3, 64, 64), [(1, 7, 64, 64)]),
        # 3 anchors x (4 box + 1 objectness + 7 classes) = 36 channels per scale
        (yolo.yolo_tiny, 7, (1, 3, 128, 128), [(1, 36, 16, 16), (1, 36, 8, 8), (1, 36, 4, 4)]),
    ],
)
def test_num_classes_is_honoured(factory, num_classes, shape, expected):
    model = factory(num_classes=num_classes).eval()
    with torch.no_grad():
        out = _as_tuple(model(torch.randn(shape)))
    assert [tuple(t.shape) for t in out] == expected


def test_resnet_family_classifier_width():
    for factory, in_features in (
        (resnet.resnet18, 512),
        (resnet.resnet50, 2048),
        (resnet.resnext50_32x4d, 2048),
        (resnet.wide_resnet50_2, 2048),
    ):
        m = factory(num_classes=10)
        assert m.fc.in_features == in_features and m.fc.out_features == 10


# vgg16_bn (138M parameters) goes last: after freeing its buffers, glibc's allocator state makes
# the allocation-heavy models that follow (densenet121) several times slower.
ORDER = [n for n in NAMES if n != "vgg16_bn"] + ["vgg16_bn"]


@pytest.mark.parametrize("name", ORDER)
def test_params_forward_shape_and_fx_parity(name):
    factory, shape = BY_NAME[name]
    torch.manual_seed(0)
    model = factory()
    assert model.training, "factories return the model as constructed (train mode)"
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]
    for mod_name, mod in model.named_modules():
        assert not getattr(mod, "inplace", False), f"{name}.{mod_name} is in-place"
        if isinstance(mod, nn.BatchNorm2d):
            assert torch.all(mod.running_mean == 0) and torch.all(mod.running_var == 1)
            assert int(mod.num_batches_tracked) == 0

    model.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        eager = _as_tuple(model(x))
        traced_module = torch.fx.symbolic_trace(model)
        traced = _as_tuple(traced_module(x))
    assert [tuple(t.shape) for t in eager] == EXPECTED_OUT_SHAPES[name]
    assert len(traced) == len(eager)
    for e, t in zip(eager, traced):
        assert torch.isfinite(e).all()
        assert e.std() > 0, "degenerate (constant) output"
        assert torch.equal(e, t) or torch.allclose(e, t, rtol=0, atol=1e-6)
