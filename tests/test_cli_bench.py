"""graphprune bench on an ONNX file with dynamic dims: --input-shape NAME=... gives them sizes."""
import json

import pytest
import torch

from cli_support import assert_one_line_error, run_cli


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


@pytest.mark.parametrize("shape, fragment", [
    ("picture=1,3,8,8", "--input-shape names ['picture'], which no model has as an input; inputs are ['image']"),
    ("image=1,4,8,8", "does not fit input 'image'"),
    ("image=1,3,8", "does not fit input 'image'"),
    ("image=1,3,0,8", "has an empty dim 2"),
    ("1,3,8,8", "must be NAME=d0,d1,..."),
])
def test_bad_input_shape(dynamic_onnx, shape, fragment):
    proc = run_cli("bench", dynamic_onnx, "--input-shape", shape, *FAST)
    assert_one_line_error(proc, fragment)
