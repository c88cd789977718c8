"""graphprune bench on an ONNX file with dynamic dims: --input-shape NAME=... gives them sizes."""
import importlib.metadata
import json

import pytest
import torch

from graphprune.cli import CLIError, check_input_shapes, main, parse_named_shapes
from graphprune.runtimes import Runtime
from cli_support import assert_one_line_error, run_cli, write_factories


@pytest.fixture(scope="module")
def dynamic_onnx(tmp_path_factory):
    """A conv net exported with dynamic batch, height and width."""
    path = tmp_path_factory.mktemp("dyn") / "dyn.onnx"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(path), input_names=["image"], output_names=["out"],
                      dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}}, dynamo=False)
    return path


FAST = ["--warmup", "1", "--repeats", "2", "--rounds", "1"]


def test_dynamic_dims_need_input_shape(dynamic_onnx):
    proc = run_cli("bench", dynamic_onnx, *FAST)
    assert_one_line_error(proc, "input 'image' has dynamic dim 2 ('height'); pass --input-shape image=N,3,N,N")
    assert "input_shapes" not in proc.stderr  # the API's argument name means nothing on the command line


def test_input_shape_runs_the_model(dynamic_onnx, tmp_path):
    proc = run_cli("bench", dynamic_onnx, "--input-shape", "image=2,3,24,20", *FAST, "--json", tmp_path / "b.json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "b.json").read_text())[0]["rows"]
    assert [r["name"] for r in rows] == ["dyn"] and len(rows[0]["latencies_ms"]) == 2


def test_unknown_input_name(dynamic_onnx):
    proc = run_cli("bench", dynamic_onnx, "--input-shape", "picture=1,3,8,8", *FAST)
    assert_one_line_error(proc, "--input-shape names ['picture'], which no model has as an input; inputs are ['image']")


@pytest.mark.parametrize("entries, fragment", [
    (["image=1,4,8,8"], "--input-shape image=1,4,8,8 does not fit input 'image' of shape ['batch', 3, 'height', 'width']; pass --input-shape image=N,3,N,N"),
    (["image=1,3,8"], "does not fit input 'image'"),
    (["image=1,3,0,8"], "has an empty dim 2"),
    (["1,3,8,8"], "must be NAME=d0,d1,..."),
    (["image=1,3,8,8", "image=1,3,9,9"], "gives input 'image' twice"),
])
def test_bad_input_shape(dynamic_onnx, entries, fragment):
    """The same checks cmd_bench runs, in process (the command-line path is covered above)."""
    with pytest.raises(CLIError) as info:
        check_input_shapes({"dyn": str(dynamic_onnx)}, parse_named_shapes(entries))
    assert fragment in str(info.value)


def test_batch_dim_may_stay_dynamic(dynamic_onnx):
    check_input_shapes({"dyn": str(dynamic_onnx)}, parse_named_shapes(["image=1,3,8,8"]))  # no error
    with pytest.raises(CLIError, match="dynamic dim 2"):  # dim 0 alone would default to 1; 2 and 3 cannot
        check_input_shapes({"dyn": str(dynamic_onnx)}, {})


# ----------------------------------------------------------------------------- runtimes, precisions, models


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    return write_factories(tmp_path_factory.mktemp("factories"))


def test_bench_a_model_at_fp32_and_int8_with_a_plot(factories, tmp_path):
    proc = run_cli("bench", "gp_cli_models.zoo:concat", "--input-shape", "1,3,16,16", "--precision", "fp32,int8",
                   *FAST, "--json", tmp_path / "b.json", "--plot", tmp_path / "p.png", path=[factories])
    assert proc.returncode == 0, proc.stderr
    (report,) = json.loads((tmp_path / "b.json").read_text())
    assert report["runtime"] == "ort" and report["runtime_version"] and report["cpu"]
    assert [r["name"] for r in report["rows"]] == ["concat", "concat+int8"]
    assert report["rows"][0]["macs"] == report["rows"][1]["macs"] > 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert f"ONNX Runtime {report['runtime_version']} on {report['cpu']}" in proc.stdout


def _one_line_error(capsys, argv) -> str:
    """main(argv) in this process: exit code 2 and exactly one line on stderr, which is returned."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graphprune: error: "), err
    return err[0]


def test_unknown_runtime_or_precision_is_one_line(dynamic_onnx, capsys):
    assert "unknown runtime 'tflite'; use one of ort, openvino, executorch" in _one_line_error(
        capsys, ["bench", dynamic_onnx, "--runtime", "ort,tflite", *FAST])
    assert "unknown precision 'fp16'; use one of fp32, int8" in _one_line_error(
        capsys, ["bench", dynamic_onnx, "--precision", "fp16", *FAST])


def test_what_an_onnx_file_cannot_do(dynamic_onnx, capsys):
    assert "works with --runtime ort --precision fp32 only" in _one_line_error(
        capsys, ["bench", dynamic_onnx, "--precision", "int8", "--input-shape", "image=1,3,8,8", *FAST])
    expected = ("ExecuTorch needs the PyTorch model" if Runtime.EXECUTORCH.installed()
                else "pip install 'graphprune[edge]'")
    assert expected in _one_line_error(capsys, ["bench", dynamic_onnx, "--runtime", "ort,executorch", *FAST])


def test_missing_runtime_names_the_extra(dynamic_onnx, monkeypatch, capsys):
    real = importlib.metadata.version

    def version(name):
        if name == "openvino":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert main(["bench", str(dynamic_onnx), "--runtime", "ort,openvino", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["graphprune: error: OpenVINO is not installed; install the edge runtimes with: "
                   "pip install 'graphprune[edge]'"]
