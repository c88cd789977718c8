"""The CLI as a user runs it: a subprocess, files on disk, one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

import graphprune
from graphprune.models import get_model

MODEL = "resnet56"


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "graphprune", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    proc = run_cli("prune", MODEL, "--ratio", "0.5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_prune_writes_every_artifact(pruned_dir):
    out, proc = pruned_dir
    assert sorted(os.listdir(out)) == ["model.onnx", "model.pt2", "original.onnx", "plan.json", "report.json"]
    assert "ORT parity" in proc.stdout and "params" in proc.stdout
    assert not [p for p in os.listdir(out.parent) if p.startswith(".graphprune-")]  # staging removed


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


def test_explain_lists_groups():
    proc = run_cli("explain", "squeezenet1_1")
    assert proc.returncode == 0, proc.stderr
    assert "frozen: channels come from model input" in proc.stdout and "prunable" in proc.stdout


def _assert_one_line_error(proc, fragment):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("[graphprune]")]  # progress
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("graphprune: error:") and fragment in lines[0], lines[0]


@pytest.mark.parametrize("args, fragment", [
    (["prune", "resnet5O", "--ratio", "0.5"], "no built-in model named 'resnet5O'"),
    (["prune", "no_such_pkg.mod:make", "--ratio", "0.5"], "cannot import module 'no_such_pkg.mod'"),
    (["prune", "json:no_such_factory", "--ratio", "0.5", "--input-shape", "1,3,8,8"], "has no callable 'no_such_factory'"),
    (["prune", "json:loads", "--ratio", "0.5", "--input-shape", "1,3,8,8"], "factory json:loads raised TypeError"),
    (["prune", MODEL, "--ratio", "0.5", "--input-shape", "1,3,x"], "not a comma-separated list"),
    (["prune", MODEL, "--ratio", "1.5"], "ratio must be a number in [0, 1)"),
])
def test_bad_input_gives_one_line_and_no_files(tmp_path, args, fragment):
    out = tmp_path / "out"
    proc = run_cli(*args, "--out", str(out))
    _assert_one_line_error(proc, fragment)
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = run_cli("prune", MODEL, "--ratio", "0.5", "--out", str(blocker / "out"))
    _assert_one_line_error(proc, "cannot write to")
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_bench_rejects_corrupted_onnx(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07not really protobuf" * 10)
    proc = run_cli("bench", str(bad), "--repeats", "5", "--rounds", "1", "--warmup", "1")
    _assert_one_line_error(proc, "broken.onnx")


def test_bench_times_two_models(pruned_dir, tmp_path):
    out, _ = pruned_dir
    proc = run_cli("bench", str(out / "original.onnx"), str(out / "model.onnx"), "--repeats", "6", "--rounds", "2",
                   "--warmup", "2", "--json", str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "b.json").read_text())
    assert [r["name"] for r in data[0]["rows"]] == ["original", "model"]
    assert "p50" in proc.stdout
