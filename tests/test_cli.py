"""The CLI as a user runs it: a subprocess, files on disk, one-line errors."""
import json
import os
import stat

import numpy as np
import onnxruntime as ort
import pytest
import torch

import graphprune
from graphprune.models import get_model
from cli_support import assert_one_line_error, run_cli

MODEL = "resnet56"
ARTIFACTS = ["model.onnx", "model.pt2", "original.onnx", "plan.json", "report.json"]


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    out = root / "missing" / "parents" / "out"  # parents are created
    proc = run_cli("prune", MODEL, "--ratio", "0.5", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_prune_writes_every_artifact(pruned_dir):
    out, proc = pruned_dir
    assert sorted(os.listdir(out)) == ARTIFACTS
    assert "ORT parity" in proc.stdout and "params" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == f"wrote {', '.join(ARTIFACTS)} to {out}"
    root = out.parent.parent.parent
    assert os.listdir(root) == ["missing"] and os.listdir(out.parent) == ["out"]  # staging removed
    assert proc.stderr == ""  # stderr is not a terminal: no progress


def test_files_are_world_readable(pruned_dir):
    out, _ = pruned_dir
    for name in ARTIFACTS:
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o644, name
    for directory in (out, out.parent, out.parent.parent):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o755, directory


def test_report_json_equals_python_api(pruned_dir):
    out, _ = pruned_dir
    spec = get_model(MODEL)
    result = graphprune.prune_graph(spec.build(), spec.example_inputs(), ratio=0.5)
    summary = json.loads((out / "report.json").read_text())
    assert summary["report"] == json.loads(json.dumps(result.report.to_json()))
    assert graphprune.PrunePlan.from_json((out / "plan.json").read_text()) == result.plan


def test_exported_onnx_matches_pytorch(pruned_dir):
    out, _ = pruned_dir
    x = get_model(MODEL).example_inputs()[0]
    reloaded = torch.export.load(str(out / "model.pt2")).module()
    with torch.no_grad():
        expected = reloaded(x).numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)
    assert os.path.getsize(out / "model.onnx") < os.path.getsize(out / "original.onnx")


def test_the_pt2_takes_any_batch_and_equals_the_pruned_model(pruned_dir):
    """model.pt2 keeps the batch dim dynamic where the model takes any batch (the example has one sample)."""
    out, _ = pruned_dir
    spec = get_model(MODEL)
    assert spec.example_inputs()[0].shape[0] == 1
    x = torch.randn(3, *spec.example_inputs()[0].shape[1:])
    expected = graphprune.prune_graph(spec.build(), spec.example_inputs(), ratio=0.5).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(out / "model.pt2")).module()(x), expected(x))


def test_apply_replaces_a_non_empty_out_with_force(pruned_dir, tmp_path):
    """apply replays plan.json into the same files as prune; --force swaps the old directory out whole."""
    src, _ = pruned_dir
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    proc = run_cli("apply", src / "plan.json", MODEL, "--out", out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ARTIFACTS  # stale.txt went with the old directory
    assert os.listdir(tmp_path) == ["out"]  # neither staging nor the old directory is left
    assert proc.stdout.strip().splitlines()[-1] == f"wrote {', '.join(ARTIFACTS)} to {out}"
    assert (out / "plan.json").read_text() == (src / "plan.json").read_text()
    report = json.loads((out / "report.json").read_text())
    pruned = json.loads((src / "report.json").read_text())["report"]
    rounding = {"round_step", "asked_before_rounding", "one_block_floor", "off_step_layers"}  # how prune chose the plan: not in the plan itself
    for key in ("params_before", "params_after", "macs_before", "macs_after", "layers", "params_removed_dead_code"):
        assert report["report"][key] == pruned[key], key
    assert [{k: v for k, v in g.items() if k not in rounding} for g in report["report"]["groups"]] == \
        [{k: v for k, v in g.items() if k not in rounding} for g in pruned["groups"]]
    assert report["plan"] == str(src / "plan.json")
    x = get_model(MODEL).example_inputs()[0].numpy()
    outputs = []
    for path in (src / "model.onnx", out / "model.onnx"):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])  # same plan, same weights: the same model


def test_explain_lists_groups():
    proc = run_cli("explain", "squeezenet1_1")
    assert proc.returncode == 0, proc.stderr
    assert "frozen: channels come from model input" in proc.stdout and "prunable" in proc.stdout


@pytest.mark.parametrize("args, fragment", [
    (["prune", "resnet5O", "--ratio", "0.5"], "no built-in model named 'resnet5O'"),
    (["prune", "no_such_pkg.mod:make", "--ratio", "0.5"], "cannot import module 'no_such_pkg.mod'"),
    (["prune", "json:no_such_factory", "--ratio", "0.5", "--input-shape", "1,3,8,8"], "has no callable 'no_such_factory'"),
    (["prune", "json:loads", "--ratio", "0.5", "--input-shape", "1,3,8,8"], "factory json:loads raised TypeError"),
    (["prune", MODEL, "--ratio", "0.5", "--input-shape", "1,3,x"], "not a comma-separated list"),
    (["prune", MODEL, "--ratio", "1.5"], "ratio must be a number in [0, 1)"),
    (["prune", MODEL, "--ratio", "0.5", "--importance", "taylor"], "needs labelled data and a loss"),
    # --ignore takes one value: MODEL is not swallowed (the error is about the ignored name, not a missing MODEL)
    (["prune", "--ignore", "layer9", MODEL, "--ratio", "0.5"], "ignore entry 'layer9' names no module"),
    (["prune", MODEL, "--ratio"], "argument --ratio: expected one argument"),
])
def test_bad_input_gives_one_line_and_no_files(tmp_path, args, fragment):
    out = tmp_path / "out"
    proc = run_cli(*args, "--out", str(out))
    assert_one_line_error(proc, fragment)
    assert os.listdir(tmp_path) == []


def test_bench_rejects_corrupted_onnx(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07not really protobuf" * 10)
    proc = run_cli("bench", str(bad), "--repeats", "5", "--rounds", "1", "--warmup", "1")
    assert_one_line_error(proc, "broken.onnx")


def test_bench_times_two_models(pruned_dir, tmp_path):
    out, _ = pruned_dir
    proc = run_cli("bench", str(out / "original.onnx"), str(out / "model.onnx"), "--repeats", "6", "--rounds", "2",
                   "--warmup", "2", "--json", str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "b.json").read_text())
    assert [r["name"] for r in data[0]["rows"]] == ["original", "model"]
    assert "p50" in proc.stdout
    assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o644
