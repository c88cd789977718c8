"""Edge artefacts after pruning: ExecuTorch .pte, OpenVINO IR, int8 (ORT QDQ, OpenVINO, ExecuTorch pt2e).

Tests that need ExecuTorch or OpenVINO are marked ``edge`` (``make test-edge`` installs the extra
and runs them); the ONNX Runtime int8 tests, the missing-runtime and bad-calibration tests need
neither and run in the default suite. Every artefact is reloaded here with the runtime's own API,
not graphprune's wrapper, and run on inputs that were not used to build or calibrate it.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune import timing
from graphprune.errors import CalibrationError, ExportError, InputError, MissingRuntimeError
from graphprune.export import export_onnx
from graphprune.models import get_model
from graphprune.quantize import is_quantized_onnx, quantize_onnx
from graphprune.latency import LatencyTable, prune_to_latency
from graphprune.runtimes.latency_table import default_cache_path
from graphprune.runtimes import Precision, Runtime, export_executorch, export_openvino

edge = pytest.mark.edge


class SmallResNet(nn.Module):
    """Conv-BN-ReLU stem, one residual block, pooled linear head: prunable, quantisable, fast to lower."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU())
        # AdaptiveAvgPool2d, not x.mean((2, 3)): XNNPACK delegates mean.dim only with keepdim=True.
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.head(self.down(x))


def _batches(shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def _cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _within(got, want, atol=1e-4, rtol=1e-3):
    """export.py's parity rule: max |got - want| <= atol + rtol * max |want|."""
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    return float(np.max(np.abs(got - want))) <= atol + rtol * float(np.max(np.abs(want)))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


@pytest.fixture(scope="module")
def resnet56():
    """The pruned zoo ResNet-56 (ratio 0.5), its example input and held-out inputs."""
    spec = get_model("resnet56")
    (x,) = spec.example_inputs()
    result = graphprune.prune_graph(spec.build(), (x,), ratio=0.5)
    assert result.report.params_after < result.report.params_before / 2  # physically smaller
    return result, x, _batches(x.shape, 4, seed=11)


@pytest.fixture(scope="module")
def small():
    """A pruned SmallResNet with trained-looking BN, its input, calibration and held-out batches."""
    torch.manual_seed(0)
    model = SmallResNet().eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    x = torch.randn(1, 3, 32, 32, generator=g)
    result = graphprune.prune_graph(model, (x,), ratio=0.5)
    assert result.report.params_after < result.report.params_before
    return result.model, x, _batches(x.shape, 16, seed=21), _batches(x.shape, 16, seed=22)


# ----------------------------------------------------------------------------- ExecuTorch


@pytest.fixture(scope="module")
def fp32_pte(resnet56, tmp_path_factory):
    result, x, _ = resnet56
    state, flags = _state(result.model), [m.training for m in result.model.modules()]
    path = tmp_path_factory.mktemp("pte") / "resnet56.pte"
    out = export_executorch(result.model, (x,), path)
    assert _same_state(result.model, state) and flags == [m.training for m in result.model.modules()]
    return out


@edge
def test_pte_reloads_in_executorch_and_matches_pytorch(resnet56, fp32_pte):
    from executorch.runtime import Runtime

    result, x, held_out = resnet56
    assert os.path.getsize(fp32_pte.path) == fp32_pte.file_bytes
    # The weights alone of the dense model would not fit: the file holds the pruned model.
    assert fp32_pte.file_bytes < 4 * result.report.params_before
    assert fp32_pte.delegated_ops > 0 and fp32_pte.undelegated_ops == ()
    assert fp32_pte.max_abs_diff < 1e-4
    method = Runtime.get().load_program(fp32_pte.path).load_method("forward")
    for inp in held_out:
        (got,) = method.execute([inp])
        with torch.no_grad():
            want = result.model(inp)
        assert got.shape == want.shape and _within(got.numpy(), want)


@edge
def test_int8_pte_from_exported_program_is_close_to_fp32(small, tmp_path):
    from executorch.runtime import Runtime

    model, x, calibration, held_out = small
    program = torch.export.export(model, (x,))
    fp32 = export_executorch(program, (x,), tmp_path / "fp32.pte")
    int8 = export_executorch(program, (x,), tmp_path / "int8.pte", quantize=calibration)
    assert int8.int8 and not fp32.int8 and int8.undelegated_ops == ()
    assert int8.file_bytes < fp32.file_bytes / 2  # int8 weights: a quarter of fp32, plus scales
    method = Runtime.get().load_program(str(tmp_path / "int8.pte")).load_method("forward")
    with torch.no_grad():
        want = torch.cat([model(b) for b in held_out])
    got = torch.cat([method.execute([b])[0] for b in held_out])
    assert _cosine(got, want) > 0.99
    assert (got.argmax(1) == want.argmax(1)).float().mean().item() >= 0.9


@edge
def test_bad_calibration_for_executorch_fails_before_lowering(small, tmp_path):
    model, x, _, _ = small
    with pytest.raises(CalibrationError, match=r"batch 1, input 0 is float32\[1, 3, 16, 16\]"):
        export_executorch(model, (x,), tmp_path / "m.pte", quantize=[x, torch.randn(1, 3, 16, 16)])
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- OpenVINO


@edge
def test_openvino_ir_from_module_and_from_onnx_matches(resnet56, tmp_path):
    import openvino as ov

    result, x, held_out = resnet56
    from_module = export_openvino(result.model, (x,), tmp_path / "m.xml")
    export_onnx(result.model, (x,), tmp_path / "m.onnx")
    from_onnx = export_openvino(tmp_path / "m.onnx", (x,), tmp_path / "o.xml")
    assert not from_module.int8 and not from_onnx.int8
    assert from_module.file_bytes < 4 * result.report.params_before
    core = ov.Core()
    for xml in ("m.xml", "o.xml"):
        assert (tmp_path / xml).with_suffix(".bin").exists()
        compiled = core.compile_model(str(tmp_path / xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        for inp in held_out:
            got = compiled([inp.numpy()])[compiled.output(0)]
            with torch.no_grad():
                assert _within(got, result.model(inp))
    assert sorted(os.listdir(tmp_path)) == ["m.bin", "m.onnx", "m.xml", "o.bin", "o.xml"]


# ----------------------------------------------------------------------------- int8 ONNX (ORT, OpenVINO)


@pytest.fixture(scope="module")
def int8_onnx(small, tmp_path_factory):
    model, x, calibration, _ = small
    d = tmp_path_factory.mktemp("q")
    export_onnx(model, (x,), d / "fp32.onnx")
    return quantize_onnx(d / "fp32.onnx", d / "int8.onnx", calibration), d


def test_int8_onnx_runs_in_onnxruntime_close_to_fp32(small, int8_onnx):
    import onnx
    import onnxruntime as ort

    model, _, _, held_out = small
    q, d = int8_onnx
    assert q.batches == 16 and q.preprocessed and q.cosine > 0.99
    assert q.file_bytes < q.fp32_bytes / 2
    proto = onnx.load(q.path)
    assert is_quantized_onnx(proto)
    int8_weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8_weights) == 4  # every conv weight is stored as int8
    session = ort.InferenceSession(q.path, providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"input_0": b.numpy()})[0] for b in held_out])
    with torch.no_grad():
        want = torch.cat([model(b) for b in held_out]).numpy()
    assert _cosine(got, want) > 0.99
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


@edge
def test_int8_onnx_converts_to_openvino_and_stays_close_to_fp32(small, int8_onnx):
    import openvino as ov

    model, x, _, held_out = small
    q, d = int8_onnx
    ir = export_openvino(q.path, (x,), d / "int8.xml")
    assert ir.int8 and ir.cosine > 0.99
    compiled = ov.Core().compile_model(ir.xml_path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.concatenate([compiled([b.numpy()])[compiled.output(0)] for b in held_out])
    with torch.no_grad():
        want = torch.cat([model(b) for b in held_out]).numpy()
    assert _cosine(got, want) > 0.99


def test_int8_too_far_from_fp32_raises_and_writes_nothing(small, int8_onnx, tmp_path):
    _, _, calibration, _ = small
    _, d = int8_onnx
    # int8 is never bit-exact: a cosine floor of 1 cannot be met.
    with pytest.raises(ExportError, match="too far from fp32: cosine similarity"):
        quantize_onnx(d / "fp32.onnx", tmp_path / "int8.onnx", calibration[:2], min_cosine=1.0)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("calibration, match", [
    ([], "no calibration batches"),
    (torch.randn(1, 3, 32, 32), "one tensor; pass a list of batches"),
    ([torch.randn(1, 3, 28, 28)],
     r"batch 0, input 0 is float32\[1, 3, 28, 28\] but the model's input 0 is float32\[1, 3, 32, 32\]"),
    ([torch.randn(1, 3, 32, 32).double()], r"is float64\[1, 3, 32, 32\]"),
    ([(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32))], "has 2 inputs, the model takes 1"),
    ([["not a tensor"]], "is a str; use a torch.Tensor or a numpy array"),
    (5, "must be a list"),
])
def test_bad_calibration_data_is_a_calibration_error(int8_onnx, tmp_path, calibration, match):
    _, d = int8_onnx
    with pytest.raises(CalibrationError, match=match):
        quantize_onnx(d / "fp32.onnx", tmp_path / "q.onnx", calibration)
    assert os.listdir(tmp_path) == []


def test_numpy_calibration_batches_are_accepted(small, int8_onnx, tmp_path):
    _, _, calibration, _ = small
    _, d = int8_onnx
    q = quantize_onnx(d / "fp32.onnx", tmp_path / "q.onnx", [b.numpy() for b in calibration[:4]])
    assert q.batches == 4 and os.path.exists(q.path)


# ----------------------------------------------------------------------------- optional runtimes


def test_graphprune_imports_no_edge_runtime():
    code = ("import sys, graphprune, graphprune.runtimes, graphprune.quantize; "
            "print(sorted(m for m in ('executorch', 'openvino', 'torchao') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(graphprune.__file__))})
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module, call", [
    ("executorch", lambda m, x, d: export_executorch(m, (x,), d / "m.pte")),
    ("openvino", lambda m, x, d: export_openvino(m, (x,), d / "m.xml")),
])
def test_missing_runtime_names_the_extra(monkeypatch, tmp_path, module, call):
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    model, x = SmallResNet().eval(), torch.randn(1, 3, 32, 32)
    with pytest.raises(MissingRuntimeError, match=r"pip install 'graphprune\[edge\]'") as info:
        call(model, x, tmp_path)
    assert len(str(info.value).splitlines()) == 1
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- latency tables in every runtime


@pytest.mark.parametrize("runtime, precision", [
    (Runtime.ORT, Precision.INT8),
    pytest.param(Runtime.OPENVINO, Precision.FP32, marks=edge),
    pytest.param(Runtime.EXECUTORCH, Precision.INT8, marks=edge),
])
def test_latency_table_measures_in_the_runtime(tmp_path, runtime, precision):
    path = tmp_path / "lut.json"
    table = LatencyTable(timing.EDGE, path=str(path), runs=3, runtime=runtime, precision=precision)
    conv = table.conv_ms(1, 16, 16, 8, 8, (3, 3), (1, 1), (1, 1), 1)
    linear = table.linear_ms(4, 16, 8)
    assert conv >= 0 and linear >= 0 and table.measured == 3  # two layers and the per-call overhead
    assert all(v > 0 for v in table.entries.values())
    assert conv == max(table.entries[next(k for k in table.entries if k.startswith("conv"))]
                       - table.overhead_ms(), 0.0)
    table.save()
    data = json.loads(path.read_text())
    assert (data["runtime"], data["precision"]) == (runtime.value, precision.value)
    assert data["runtime_version"] == runtime.version() and len(data["entries"]) == 3
    again = LatencyTable(timing.EDGE, path=str(path), runs=3, runtime=runtime, precision=precision)
    assert again.conv_ms(1, 16, 16, 8, 8, (3, 3), (1, 1), (1, 1), 1) == conv and again.measured == 0
    others = {default_cache_path(timing.EDGE, r, p) for r in (Runtime.ORT, runtime) for p in Precision}
    assert len(others) == (2 if runtime is Runtime.ORT else 4)  # one table per runtime and precision


def test_prune_to_latency_refuses_a_table_of_another_runtime(tmp_path):
    table = LatencyTable(timing.EDGE, path=str(tmp_path / "lut.json"), runtime=Runtime.ORT, precision=Precision.INT8)
    with pytest.raises(InputError, match="the latency table measures ort/int8"):
        prune_to_latency(SmallResNet().eval(), torch.randn(1, 3, 32, 32), 1.0, table=table)


class TinyEncoder(nn.Module):
    """One pre-norm self-attention block (nn.MultiheadAttention) with an MLP: heads and width both prune."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.embed, self.norm = nn.Linear(8, dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        y = self.norm(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return self.head((x + self.mlp(x)).mean(1))


@edge
def test_pruned_attention_lowers_to_xnnpack_as_fully_as_the_dense_model(tmp_path):
    """PrunedMultiheadAttention splits the packed projection's output, not its weights: split weights would be
    computed tensors, which XNNPACK cannot take, and the linear layers around them fell out of the delegate."""
    torch.manual_seed(0)
    model, x = TinyEncoder().eval(), torch.randn(1, 6, 8)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none")
    assert any(type(m).__name__ == "PrunedMultiheadAttention" for m in result.model.modules())
    dense = export_executorch(model, (x,), tmp_path / "dense.pte")
    pruned = export_executorch(result.model, (x,), tmp_path / "pruned.pte")
    assert set(pruned.undelegated_ops) <= set(dense.undelegated_ops), pruned.undelegated_ops
    assert pruned.delegated_ops > 0 and pruned.max_abs_diff < 1e-4
