"""ONNX export and PyTorch artifact: parity in ONNX Runtime, atomic writes, clear errors."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import graphprune.export as export_mod
from graphprune.errors import ExportError, GraphPruneError
from graphprune.export import ExportResult, export_onnx, save_torch_artifact


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


class SmallAttention(nn.Module):
    """Returns a tuple: pooled logits and the attention block's output."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        y, _ = self.attn(h, h, h, need_weights=False)
        return self.head(y).mean(dim=1), y


@torch.library.custom_op("graphprune_test::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_twice.register_fake
def _(x):
    return torch.empty_like(x)


class NoOnnxRule(nn.Module):
    """Uses a custom op that has neither a TorchScript symbolic nor a dynamo translation."""

    def forward(self, x):
        return _twice(x) + 1


class Stateful(nn.Module):
    """Each call returns a different result: a trace captures a stale constant."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x + self.calls


def _trained_bn(model: nn.Module) -> nn.Module:
    """Give BN non-trivial running stats so eval vs train mode differ."""
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    return model


def _ort_outputs(path, *inputs):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)})


def _leftovers(directory):
    return sorted(f for f in os.listdir(directory) if ".tmp" in f)


def test_export_cnn_matches_pytorch_and_keeps_model_untouched(tmp_path):
    model = _trained_bn(SmallCNN())
    model.train()
    model.fc.eval()  # mixed per-module flags must come back as they were
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "cnn.onnx"

    result = export_onnx(model, x, path)

    assert isinstance(result, ExportResult)
    assert result.path == str(path) and os.path.isfile(path)
    assert result.file_bytes == os.path.getsize(path)
    assert result.opset == 17
    assert 0 <= result.max_abs_diff < 1e-4
    onnx.checker.check_model(str(path), full_check=True)
    # the file computes the eval-mode model
    (got,) = _ort_outputs(str(path), x)
    model.eval()
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    assert result.largest_output == float(np.abs(want).max())
    model.train()
    model.fc.eval()
    # caller's model: same flags, same weights and BN stats
    assert model.training and model.bn.training and not model.fc.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert _leftovers(tmp_path) == []


def test_export_multihead_attention_with_tuple_outputs_under_no_grad(tmp_path):
    model = SmallAttention().eval()
    model.requires_grad_(False)  # frozen weights would otherwise select the fused fast path
    x = torch.randn(2, 5, 6)
    path = tmp_path / "attn.onnx"

    with torch.no_grad():
        result = export_onnx(model, (x,), path)
        want = model(x)

    assert result.exporter == "torchscript" and result.opset >= 17
    assert result.max_abs_diff < 1e-4
    got = _ort_outputs(str(path), x)
    assert len(got) == 2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=1e-3)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "MatMul" in ops and "Softmax" in ops
    assert not any(p.requires_grad for p in model.parameters())


def test_export_fx_graph_module_with_dynamic_batch(tmp_path):
    gm = torch.fx.symbolic_trace(_trained_bn(SmallCNN()).eval())
    assert isinstance(gm, torch.fx.GraphModule)
    path = tmp_path / "gm.onnx"

    result = export_onnx(gm, (torch.randn(2, 3, 16, 16),), path, dynamic_batch=True)

    assert result.max_abs_diff < 1e-4
    x = torch.randn(5, 3, 16, 16)
    (got,) = _ort_outputs(str(path), x)
    with torch.no_grad():
        np.testing.assert_allclose(got, gm(x).numpy(), atol=1e-4, rtol=1e-3)
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value")


def test_dynamo_exporter_is_the_fallback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("torchscript exporter unavailable")

    monkeypatch.setattr(export_mod, "_export_torchscript", broken)
    model = SmallAttention().eval()
    result = export_onnx(model, torch.randn(2, 5, 6), tmp_path / "d.onnx")
    assert result.exporter == "dynamo"
    assert result.opset >= 18
    assert result.max_abs_diff < 1e-4
    assert os.listdir(tmp_path) == ["d.onnx"]  # one self-contained file, no external data


def test_op_without_onnx_rule_raises_and_leaves_no_file(tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError) as info:
        export_onnx(NoOnnxRule(), torch.randn(2, 3), path)
    message = str(info.value)
    assert "twice" in message and str(path) in message
    assert "torchscript exporter" in message and "dynamo exporter" in message
    assert os.listdir(tmp_path) == []


def test_parity_failure_names_the_difference_and_keeps_old_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(ExportError, match=r"max abs diff 1 "):
        export_onnx(Stateful(), torch.zeros(2, 3), path)
    assert path.read_bytes() == b"previous export"  # a failed export never touches path
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, inputs, match",
    [
        ({"opset": 16}, torch.randn(1, 3, 8, 8), "opset >= 17"),
        ({"atol": -1.0}, torch.randn(1, 3, 8, 8), "atol"),
        ({}, "not a tensor", "example_inputs"),
        ({}, torch.randn(1, 5, 8, 8), "raised on the example inputs"),
    ],
)
def test_bad_arguments_raise_export_error(tmp_path, kwargs, inputs, match):
    path = tmp_path / "x.onnx"
    with pytest.raises(ExportError, match=match):
        export_onnx(SmallCNN(), inputs, path, **kwargs)
    assert os.listdir(tmp_path) == []


def test_missing_directory_is_an_export_error(tmp_path):
    with pytest.raises(GraphPruneError, match="does not exist"):
        export_onnx(SmallCNN(), torch.randn(1, 3, 8, 8), tmp_path / "no" / "x.onnx")


@pytest.mark.parametrize("trace", [False, True])
def test_save_torch_artifact_round_trips_with_torch_export(tmp_path, trace):
    model = _trained_bn(SmallCNN()).eval()
    if trace:
        model = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "model.pt2"

    assert save_torch_artifact(model, x, path) == "pt2"

    reloaded = torch.export.load(str(path)).module()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), atol=1e-5, rtol=1e-4)
    assert _leftovers(tmp_path) == []


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_save_torch_artifact_falls_back_to_torchscript(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("torch.export cannot handle this model")

    monkeypatch.setattr(torch.export, "export", broken)
    model = SmallAttention().eval()
    x = torch.randn(2, 5, 6)
    path = tmp_path / "model.pt"

    assert save_torch_artifact(model, x, path) == "torchscript"

    reloaded = torch.jit.load(str(path))
    with torch.no_grad():
        for got, want in zip(reloaded(x), model(x)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert os.listdir(tmp_path) == ["model.pt"]


def test_save_torch_artifact_that_cannot_be_verified_leaves_no_file(tmp_path):
    path = tmp_path / "s.pt2"
    with pytest.raises(ExportError) as info:
        save_torch_artifact(Stateful(), torch.zeros(2, 3), path)
    assert "torch.export" in str(info.value) and "torch.jit.trace" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_an_aten_graph_goes_to_the_dynamo_exporter_first_and_falls_back_to_torchscript(tmp_path, monkeypatch):
    """The export frontend's graphs hold ATen ops, which the dynamo exporter translates directly."""
    import graphprune
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(2, 6)
    pruned = graphprune.prune_graph(model, (x,), ratio=0.5, frontend="export", target="none").model
    assert export_onnx(pruned, (x,), tmp_path / "a.onnx").exporter == "dynamo"

    def broken(*args, **kwargs):
        raise RuntimeError("dynamo exporter unavailable")

    monkeypatch.setattr(export_mod, "_export_dynamo", broken)
    result = export_onnx(pruned, (x,), tmp_path / "b.onnx")
    assert result.exporter == "torchscript" and result.max_abs_diff < 1e-4



class _BiasedAttentionThenMerge(nn.Module):
    """T5's pattern: a relative-position bias per head (an embedding of distances) as SDPA's mask, then the heads
    merged by transpose(1, 2).reshape. torch.export (batch dynamic) decomposes that reshape as a `view` that is
    valid for the strides it saw but not for those a static re-trace sees."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.heads, self.q, self.k, self.v = heads, nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.bias, self.out = nn.Embedding(8, heads), nn.Linear(dim, dim)

    def forward(self, x):
        b, s, d = x.shape
        split = lambda t: t.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        pos = torch.arange(s)
        mask = self.bias((pos[:, None] - pos[None, :]).abs().clamp(max=7)).permute(2, 0, 1).unsqueeze(0)
        y = torch.nn.functional.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)),
                                                             attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, s, -1))


def test_export_graph_with_heads_merged_after_biased_sdpa_exports_to_onnx_and_pt2(tmp_path):
    """The export frontend's graph writes no `view` (only reshapes), so it re-traces under fake tensors: ONNX
    Runtime parity and a .pt2 of the pruned graph (both failed on T5 and Hugging Face Swin)."""
    import graphprune
    torch.manual_seed(0)
    model, x = _BiasedAttentionThenMerge().eval(), torch.randn(1, 5, 16)
    result = graphprune.prune_graph(model, (x,), ratio=0.5, target="none", frontend="export")
    assert result.report.params_after < result.report.params_before
    assert not any(n.target is torch.ops.aten.view.default for n in result.model.graph.nodes)
    assert export_onnx(result.model, (x,), tmp_path / "m.onnx").max_abs_diff <= 1e-5
    assert save_torch_artifact(result.model, (x,), tmp_path / "m.pt2") == "pt2"
