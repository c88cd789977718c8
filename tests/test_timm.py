"""`graphprune prune timm:NAME` (marker `timm`; make test-ultralytics installs timm in the same venv as ultralytics).

The loader asks timm for the model with its pretrained weights, as a user gets them. Nothing is downloaded: the
weights of a seeded random-init resnet18 are put where huggingface_hub's cache keeps timm's weights, under a
temporary HF_HOME with HF_HUB_OFFLINE=1, so timm's own pretrained path loads them. The CLI prunes the model, and the
original.onnx it writes holds those weights (so they were the ones loaded). Every test fails on any network use.
"""
import os

import pytest
import torch

from cli_support import assert_one_line_error, run_cli
from offline_support import offline  # noqa: F401  (autouse: every test fails on any network use)

pytestmark = pytest.mark.timm
timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """resnet18's state dict, stored as timm's pretrained file in an offline huggingface_hub cache."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False)
    home = tmp_path_factory.mktemp("hf-home")
    repo = model.pretrained_cfg["hf_hub_id"]  # e.g. timm/resnet18.a1_in1k
    revision = "0" * 40
    cache = home / "hub" / ("models--" + repo.replace("/", "--"))
    (cache / "refs").mkdir(parents=True)
    (cache / "snapshots" / revision).mkdir(parents=True)
    (cache / "refs" / "main").write_text(revision)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(cache / "snapshots" / revision / "model.safetensors"))
    return home, state


@pytest.fixture(autouse=True)
def hub(weights, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(weights[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_prune_a_timm_model_by_name_with_its_pretrained_weights(weights, tmp_path):
    import onnx
    from onnx import numpy_helper

    proc = run_cli("prune", "timm:resnet18", "--ratio", "0.5", "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ORT parity" in proc.stdout
    out = tmp_path / "out"
    assert {"model.onnx", "model.pt2", "original.onnx", "report.json"} <= set(os.listdir(out))
    stem = torch.from_numpy(next(numpy_helper.to_array(t) for t in onnx.load(str(out / "original.onnx")).graph.initializer
                                 if tuple(t.dims) == (64, 3, 7, 7)))
    state = weights[1]  # the exporter folds bn1 into conv1: w * gamma / sqrt(var + eps)
    scale = state["bn1.weight"] / torch.sqrt(state["bn1.running_var"] + 1e-5)
    torch.testing.assert_close(stem, state["conv1.weight"] * scale[:, None, None, None], rtol=1e-6, atol=1e-7)
    assert os.path.getsize(out / "model.onnx") < 0.5 * os.path.getsize(out / "original.onnx")


def test_an_unknown_timm_name_is_one_line(tmp_path):
    assert_one_line_error(run_cli("prune", "timm:resnet18x", "--ratio", "0.5", "--out", tmp_path / "o", cwd=tmp_path),
                          "timm cannot create MODEL 'timm:resnet18x'")
    assert not (tmp_path / "o").exists()


def test_a_timm_model_whose_weights_are_not_at_hand_is_one_line(tmp_path):
    """resnet34's weights are not in the offline cache: one line naming the model, no traceback, no output."""
    assert_one_line_error(run_cli("prune", "timm:resnet34", "--ratio", "0.5", "--out", tmp_path / "o", cwd=tmp_path),
                          "with its pretrained weights")
    assert not (tmp_path / "o").exists()
