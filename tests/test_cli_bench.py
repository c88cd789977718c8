"""graphprune bench on an ONNX file with dynamic dims: --input-shape NAME=... gives them sizes."""
import json

import pytest
import torch

from graphprune.cli import CLIError, check_input_shapes, parse_named_shapes
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
