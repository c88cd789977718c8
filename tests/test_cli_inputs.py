"""MODEL kinds, real calibration data and budgets from the shell (graphprune prune/apply/explain/bench): each run as a
user runs it, a subprocess in a fresh directory, on a small model built here: a tiny ExportedProgram saved with
torch.export.save, a tiny Hugging Face Llama saved with save_pretrained (and a word-level tokenizer), a folder of
generated images, a file of sentences. timm and ultralytics are optional: without them their one-line errors are
tested; the edge runtimes likewise (``-m edge`` runs the ExecuTorch/OpenVINO bench)."""
import dataclasses
import importlib.util
import json
import os
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.cli import main
from graphprune.cli.images import image_batches
from graphprune.runtimes import Runtime
from cli_support import assert_one_line_error, run_cli, write_factories

FAST = ["--warmup", "1", "--repeats", "2", "--rounds", "1"]
WORDS = "the a cat dog sat on mat runs fast slow red blue model prune graph tensor data line text small big".split()
TOKENS = 12


class Tiny(nn.Module):
    """conv 3->16 -> relu -> conv 16->8 -> relu -> linear: one prunable group of 16, one of 8."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))).flatten(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """tiny.pt2 (an ExportedProgram, batch fixed to 1), images/ (20 generated PNGs), lines.txt (40 sentences)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    torch.export.save(torch.export.export(Tiny().eval(), (torch.randn(1, 3, 8, 8),)), str(root / "tiny.pt2"))
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for k in range(20):
        Image.fromarray((rng.random((12, 10, 3)) * 255).astype("uint8")).save(root / "images" / f"{k:02d}.png")
    (root / "lines.txt").write_text("\n".join(" ".join(WORDS[(7 * i + 3 * j) % len(WORDS)] for j in range(3 + i % 6))
                                              for i in range(40)) + "\n")
    return root


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A 1-layer Llama (hidden 16, 2 heads, 1 KV head) and a word-level tokenizer over WORDS, save_pretrained."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    directory = tmp_path_factory.mktemp("hf") / "tiny-llama"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    assert config.use_cache  # as save_pretrained writes it for most checkpoints: forward returns a KV cache
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(
        directory)
    return directory


def _cwd(tmp_path, files):
    """A fresh directory holding the inputs under relative names, as a user's working directory."""
    for name in ("tiny.pt2", "images", "lines.txt"):
        os.symlink(files / name, tmp_path / name)
    return str(tmp_path)


def _params(path) -> int:
    return sum(p.numel() for p in torch.export.load(str(path)).module().parameters())


# -- a .pt2 ExportedProgram -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pruned_pt2(tmp_path_factory, files):
    cwd = tmp_path_factory.mktemp("fresh")
    _cwd(cwd, files)
    done = run_cli("prune", "tiny.pt2", "--ratio", "0.5", "--target", "none", "--out", "out", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd / "out"


def test_prune_an_exported_program(pruned_pt2, files):
    report = json.loads((pruned_pt2 / "report.json").read_text())
    assert report["model"] == str(pruned_pt2.parent / "tiny.pt2")  # absolute: graphprune recover finds it from anywhere
    assert report["report"]["params_before"] == _params(files / "tiny.pt2") == 3 * 16 * 9 + 16 + 16 * 8 * 9 + 8 + 5130
    assert report["report"]["params_after"] == _params(pruned_pt2 / "model.pt2")
    # 8 of 16 and 4 of 8 channels kept: a.weight, a.bias, b.weight, b.bias, head.weight, head.bias
    assert report["report"]["params_after"] == 3 * 8 * 9 + 8 + 8 * 4 * 9 + 4 + 10 * 4 * 64 + 10
    ep = torch.export.load(str(files / "tiny.pt2"))
    expected = graphprune.prune_graph(ep, ep.example_inputs[0], ratio=0.5, target="none")
    assert graphprune.PrunePlan.from_json((pruned_pt2 / "plan.json").read_text()) == expected.plan
    x = torch.randn(1, 3, 8, 8)
    got = torch.export.load(str(pruned_pt2 / "model.pt2")).module()(x)
    torch.testing.assert_close(got, expected.model(x), rtol=0, atol=0)


@pytest.mark.slow  # ~8 s; prune_an_exported_program covers the .pt2 path in make test
def test_apply_the_plan_to_the_exported_program(pruned_pt2, files, tmp_path):
    cwd = _cwd(tmp_path, files)
    done = run_cli("apply", pruned_pt2 / "plan.json", "tiny.pt2", "--out", "again", cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert _params(tmp_path / "again" / "model.pt2") == _params(pruned_pt2 / "model.pt2")


def test_bench_times_a_pruned_pt2_in_ort(pruned_pt2, tmp_path):
    done = run_cli("bench", pruned_pt2 / "model.pt2", pruned_pt2 / "model.onnx", *FAST, "--json", tmp_path / "b.json",
                   cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "b.json").read_text())[0]["rows"]
    assert [r["name"] for r in rows] == ["model.pt2", "model"] and all(len(r["latencies_ms"]) == 2 for r in rows)


class _ReturnsModelOutput(nn.Module):
    """Two convolutions returning a transformers BaseModelOutput (`output`), as Hugging Face models return theirs."""

    def __init__(self, output):
        super().__init__()
        self.a, self.b, self.output = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1), output

    def forward(self, x):
        return self.output(last_hidden_state=self.b(torch.relu(self.a(x))))


def test_a_pt2_returning_transformers_outputs_loads_in_a_fresh_process(tmp_path):
    """torch.export.load rebuilds BaseModelOutput only once transformers.modeling_outputs is imported, which a fresh
    `graphprune` process has not done: it imports it, as the archive names it, then prunes and benches the program."""
    outputs = pytest.importorskip("transformers.modeling_outputs")
    model = _ReturnsModelOutput(outputs.BaseModelOutput).eval()
    x = torch.randn(1, 3, 8, 8)
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "hf.pt2"))
    done = run_cli("prune", "hf.pt2", "--ratio", "0.5", "--target", "none", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    pruned = torch.export.load(str(tmp_path / "out" / "model.pt2")).module()(x)
    assert type(pruned).__name__ == "BaseModelOutput" and pruned.last_hidden_state.shape == (1, 8, 8, 8)
    done = run_cli("bench", tmp_path / "out" / "model.pt2", *FAST, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


@dataclasses.dataclass
class _Pair:
    first: torch.Tensor
    second: torch.Tensor


torch.export.register_dataclass(_Pair, serialized_type_name="graphprune_tests.Pair")


class _ReturnsPair(nn.Module):
    def forward(self, x):
        return _Pair(x * 2, x + 1)


def test_a_pt2_of_types_no_process_can_rebuild_is_one_line_naming_them(tmp_path):
    torch.export.save(torch.export.export(_ReturnsPair(), (torch.randn(1, 3, 8, 8),)), str(tmp_path / "pair.pt2"))
    done = run_cli("bench", "pair.pt2", *FAST, cwd=tmp_path)
    assert_one_line_error(done, "returns graphprune_tests.Pair, which torch.export.load rebuilds only once")


@pytest.mark.skipif(Runtime.EXECUTORCH.installed(), reason="the edge extra is installed: the edge test runs instead")
def test_bench_pt2_on_executorch_without_the_extra_is_one_line(pruned_pt2):
    assert_one_line_error(run_cli("bench", pruned_pt2 / "model.pt2", "--runtime", "executorch", *FAST),
                          "pip install 'graphprune[edge]'")


@pytest.mark.edge
def test_bench_times_a_pruned_pt2_on_executorch_and_openvino(pruned_pt2, tmp_path):
    done = run_cli("bench", pruned_pt2 / "model.pt2", "--runtime", "executorch,openvino", *FAST,
                   "--json", tmp_path / "b.json", cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    reports = json.loads((tmp_path / "b.json").read_text())
    assert len(reports) == 2 and all([r["name"] for r in rep["rows"]] == ["model.pt2"] for rep in reports)


def test_bench_an_onnx_file_on_executorch_names_what_is_accepted(pruned_pt2):
    proc = run_cli("bench", pruned_pt2 / "model.onnx", "--runtime", "executorch", *FAST)
    assert_one_line_error(proc, "pip install 'graphprune[edge]'" if not Runtime.EXECUTORCH.installed()
                          else "is an ONNX file; ExecuTorch needs the PyTorch model: a built-in model name")


# -- --images on a folder of generated images -----------------------------------------------------------------------
def test_images_feed_a_data_driven_criterion(files, tmp_path):
    """--importance activation on the images (batches of 1: the program's batch is fixed) gives the plan the
    Python API gives on the same batches, and another than on random inputs."""
    cwd = _cwd(tmp_path, files)
    done = run_cli("prune", "tiny.pt2", "--ratio", "0.5", "--target", "none", "--importance", "activation",
                   "--images", "images", "--calibration-batches", "6", "--out", "out", cwd=cwd)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["calibration_data"] == "images" and report["calibration_batches"] == 6
    ep = torch.export.load(str(files / "tiny.pt2"))
    batches = image_batches(str(files / "images"), (1, 3, 8, 8), 1)[:6]
    expected = graphprune.prune_graph(ep, ep.example_inputs[0], ratio=0.5, target="none", importance="activation",
                                      calibration=[(b,) for b in batches])
    assert graphprune.PrunePlan.from_json((tmp_path / "out" / "plan.json").read_text()) == expected.plan


def test_images_nothing_reads_is_one_line(files, tmp_path):
    cwd = _cwd(tmp_path, files)
    assert_one_line_error(run_cli("prune", "tiny.pt2", "--ratio", "0.5", "--images", "images", "--out", "o", cwd=cwd),
                          "--images feeds a data-driven --importance (activation, apoz, wanda) or --recover-steps")


# -- budgets --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value, key", [("--target-params", "2k", "params_after"),
                                              pytest.param("--target-macs", "60000", "macs_after",
                                                           marks=pytest.mark.slow)])  # the same path, ~8 s
def test_count_budgets(files, tmp_path, flag, value, key):
    cwd = _cwd(tmp_path, files)
    done = run_cli("prune", "tiny.pt2", flag, value, "--target", "none", "--out", "out", cwd=cwd)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    goal = 2000 if flag == "--target-params" else 60000
    assert report[flag[2:].replace("-", "_")] == goal and "ratio" not in report
    assert report["report"][key] <= goal < report["report"][key.replace("after", "before")]
    assert report["report"]["params_after"] == _params(tmp_path / "out" / "model.pt2")


@pytest.mark.parametrize("argv, fragment", [
    (["--ratio", "0.5", "--target-params", "2k"], "give exactly one budget: --ratio R, --target-params N, "
                                                  "--target-macs N or --target-latency-ms MS [RUNTIME]; got --ratio, "
                                                  "--target-params"),
    ([], "give exactly one budget"),
    (["--target-params", "lots"], "--target-params 'lots' is not a positive count; give e.g. 1500000 or 1.5M"),
    (["--target-macs", "0"], "--target-macs '0' is not a positive count"),
    (["--target-latency-ms", "2", "tflite"], "unknown runtime 'tflite'; use one of ort, openvino, executorch"),
    (["--target-latency-ms", "fast"], "--target-latency-ms 'fast' is not a positive number of milliseconds"),
    (["--target-latency-ms", "2", "ort", "x"], "--target-latency-ms takes MS and an optional RUNTIME"),
])
def test_budget_errors_are_one_line(files, capsys, argv, fragment):
    assert main(["prune", str(files / "tiny.pt2"), *argv, "--out", str(files / "never")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graphprune: error: ") and fragment in err[0], err
    assert not (files / "never").exists()


@pytest.mark.slow  # measures per-layer and whole-model latencies in ONNX Runtime
def test_target_latency_in_ort(tmp_path):
    """A target above the model's latency is one line naming that latency (measured here: it depends on the CPU);
    then half of it prunes. The model is wide enough (38M MACs) for its latency to be compute, not overhead."""
    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 8, 1)).eval()
    torch.export.save(torch.export.export(wide, (torch.randn(1, 3, 32, 32),)), str(tmp_path / "wide.pt2"))
    above = run_cli("prune", "wide.pt2", "--target-latency-ms", "1000", "ort", "--out", "out", cwd=tmp_path)
    assert above.returncode == 2 and "must be a positive number below the model's" in above.stderr, above.stderr
    dense_ms = float(re.search(r"below the model's ([0-9.]+) latency", above.stderr).group(1))
    target = round(0.5 * dense_ms, 6)
    done = run_cli("prune", "wide.pt2", "--target-latency-ms", str(target), "ort", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["target_latency_ms"] == target and report["latency_runtime"] == "ort"
    assert report["latency_ms"]["measured"] > 0 and report["report"]["params_after"] < report["report"]["params_before"]


# -- a Hugging Face model directory ---------------------------------------------------------------------------------
def test_explain_a_hugging_face_directory(hf_dir, tmp_path):
    done = run_cli("explain", hf_dir, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "frontend export (torch.fx cannot trace LlamaForCausalLM)" in done.stdout
    assert "mlp.up_proj" in done.stdout and "lm_head" in done.stdout


@pytest.mark.slow  # ~20 s: the export frontend, two ONNX exports, a .pt2 and save_pretrained of a Llama
def test_prune_a_hugging_face_directory_on_text(hf_dir, files, tmp_path):
    """The tokenizer of the directory reads --text; activation scores on its lines give the Python API's plan;
    the pruned Llama is written with save_pretrained and reloads equal to model.pt2."""
    transformers = pytest.importorskip("transformers")
    cwd = _cwd(tmp_path, files)
    done = run_cli("prune", hf_dir, "--ratio", "0.5", "--target", "none", "--importance", "activation", "--text",
                   "lines.txt", "--max-length", str(TOKENS), "--batch-size", "8", "--calibration-batches", "3",
                   "--out", "out", cwd=cwd)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert "pruned model: save_pretrained in hf/ (reload with LlamaForCausalLM.from_pretrained)" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["native"]["format"] == "save_pretrained" and report["vocab_size"] == len(WORDS) + 2
    assert report["calibration_data"] == "lines.txt" and report["input_shape"] == [1, TOKENS]
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    lines = [line for line in (files / "lines.txt").read_text().splitlines() if line]
    ids = tokenizer(lines, padding="max_length", truncation=True, max_length=TOKENS, return_tensors="pt")["input_ids"]
    dense = transformers.LlamaForCausalLM.from_pretrained(hf_dir, local_files_only=True).eval()
    expected = graphprune.prune_graph(dense, (ids[:1],), ratio=0.5, target="none", importance="activation",
                                      calibration=[(b,) for b in ids.split(8)[:3]])
    assert graphprune.PrunePlan.from_json((out / "plan.json").read_text()) == expected.plan
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out / "hf", local_files_only=True).eval()
    assert sum(p.numel() for p in reloaded.parameters()) == report["report"]["params_after"]
    with torch.no_grad():
        got = torch.export.load(str(out / "model.pt2")).module()(ids[:1])
        torch.testing.assert_close(reloaded(ids[:1]).logits, got.logits if hasattr(got, "logits") else got[0])
    assert transformers.AutoTokenizer.from_pretrained(out / "hf", local_files_only=True)(lines[0])["input_ids"] == \
        tokenizer(lines[0])["input_ids"]


@pytest.mark.slow  # ~25 s: the export frontend, recovery, two ONNX exports, a .pt2 and save_pretrained
def test_prune_and_recover_a_hugging_face_directory(hf_dir, files, tmp_path):
    """Recovery returns the caller's class (LlamaForCausalLM): that is what save_pretrained writes, with the
    recovered weights that model.pt2 also holds, and the directory's config keeps its KV cache on."""
    transformers = pytest.importorskip("transformers")
    cwd = _cwd(tmp_path, files)
    done = run_cli("prune", hf_dir, "--ratio", "0.5", "--target", "none", "--text", "lines.txt", "--max-length",
                   str(TOKENS), "--batch-size", "8", "--recover-steps", "2", "--out", "out", cwd=cwd)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["native"]["format"] == "save_pretrained" and report["recovery"]["steps"] == 2
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out / "hf", local_files_only=True).eval()
    assert reloaded.config.use_cache and sum(p.numel() for p in reloaded.parameters()) == report["report"]["params_after"]
    ids = torch.randint(0, len(WORDS) + 2, (1, TOKENS), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = torch.export.load(str(out / "model.pt2")).module()(ids)
        torch.testing.assert_close(reloaded(ids).logits, got.logits if hasattr(got, "logits") else got[0])


def test_hugging_face_directory_without_weights_is_one_line(hf_dir, tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text((hf_dir / "config.json").read_text())
    assert_one_line_error(run_cli("explain", "cfg", cwd=str(tmp_path)),
                          "has config.json but no weights (model.safetensors, model.safetensors.index.json")


# -- what MODEL is not: one line naming what was given and what is accepted -----------------------------------------
ACCEPTED = ("a built-in model name (graphprune explain --list), package.module:factory, a .pt2 ExportedProgram "
            "(torch.export.save), a Hugging Face model directory (config.json + weights), timm:NAME, or an "
            "ultralytics .pt/.yaml")


def _write(tmp_path, case):
    """The file or directory of a misnamed or missing MODEL; returns MODEL."""
    if case == "text_named_pt2":
        (tmp_path / "model.pt2").write_text("not an archive")
        return "model.pt2"
    if case == "torch_save":
        torch.save({"state": torch.zeros(2)}, tmp_path / "weights.pt2")
        return "weights.pt2"
    if case == "plain_dir":
        (tmp_path / "plain").mkdir()
        return "plain"
    if case == "missing":
        return "nowhere/model.pt2"
    if case == "onnx":
        torch.onnx.export(nn.Linear(2, 2), (torch.randn(1, 2),), str(tmp_path / "m.onnx"), dynamo=False)
        return "m.onnx"
    return "resnet_57"


@pytest.mark.parametrize("case, fragment", [
    ("text_named_pt2", "MODEL 'model.pt2' (.pt2) is a file graphprune does not recognise: not a torch.export .pt2 "
                       "archive, an ultralytics checkpoint or model YAML (backbone: and head:), nor an ONNX file. "
                       "MODEL is " + ACCEPTED),
    ("torch_save", "MODEL 'weights.pt2' is a torch.save pickle (of collections, torch), not an ExportedProgram or an "
                   "ultralytics checkpoint"),
    ("plain_dir", "MODEL 'plain' is a directory without config.json, so not a Hugging Face model directory; MODEL is "
                  + ACCEPTED),
    ("missing", "MODEL 'nowhere/model.pt2' does not exist (no such file or directory); MODEL is " + ACCEPTED),
    ("onnx", "is an ONNX file; pruning needs the PyTorch model: " + ACCEPTED),
    ("unknown_name", "MODEL 'resnet_57' is not a file, a directory or a built-in model (no built-in model named "
                     "'resnet_57'; did you mean"),
])
def test_what_model_is_not_is_one_line(tmp_path, monkeypatch, capsys, case, fragment):
    monkeypatch.chdir(tmp_path)
    spec = _write(tmp_path, case)
    assert main(["prune", spec, "--ratio", "0.5", "--out", "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graphprune: error: ") and fragment in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_misnamed_model_is_one_line_from_the_shell(tmp_path):
    (tmp_path / "model.pt2").write_text("not an archive")
    assert_one_line_error(run_cli("bench", "model.pt2", cwd=str(tmp_path)), "is a file graphprune does not recognise")


# -- timm and ultralytics: detected without the library; one line names the extra -----------------------------------
@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_without_timm_names_the_extra(tmp_path):
    assert_one_line_error(run_cli("explain", "timm:resnet18", cwd=str(tmp_path)),
                          "MODEL 'timm:resnet18' needs timm, which is not installed; pip install 'graphprune[timm]'")


FAKE_ULTRALYTICS = '''
import torch.nn as nn


class DetectionModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
'''


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is not None, reason="ultralytics is installed")
@pytest.mark.parametrize("name", ["yolo.pt", "yolo.yaml"])
def test_ultralytics_without_ultralytics_names_the_extra(tmp_path, name):
    """A checkpoint pickling ultralytics classes (made with a stand-in package, gone at load time) and a model YAML
    (backbone: and head:) are recognised as ultralytics models without ultralytics."""
    if name == "yolo.pt":
        fake = tmp_path / "fake" / "ultralytics" / "nn"
        fake.mkdir(parents=True)
        (fake.parent / "__init__.py").write_text("")
        (fake / "__init__.py").write_text("")
        (fake / "tasks.py").write_text(FAKE_ULTRALYTICS)
        script = ("import torch; from ultralytics.nn.tasks import DetectionModel; "
                  "torch.save({'model': DetectionModel(), 'epoch': 3}, 'yolo.pt')")
        import subprocess
        import sys
        subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True,
                       env={**os.environ, "PYTHONPATH": str(tmp_path / "fake")})
    else:
        (tmp_path / name).write_text("nc: 80\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\nhead:\n  - [-1, 1, Detect, [nc]]\n")
    proc = run_cli("prune", name, "--ratio", "0.5", "--out", "out", cwd=str(tmp_path))
    assert_one_line_error(proc, f"MODEL '{tmp_path / name}' is an ultralytics model; reading it needs ultralytics, "
                                "which is not installed; pip install 'graphprune[ultralytics]'")


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is not None, reason="ultralytics is installed")
def test_a_config_name_ultralytics_ships_names_the_extra(tmp_path):
    """yolov8n.yaml, no such file here: the name of a config ultralytics ships (its yolov8.yaml at scale n)."""
    assert_one_line_error(run_cli("prune", "yolov8n.yaml", "--ratio", "0.5", "--out", "out", cwd=str(tmp_path)),
                          "MODEL 'yolov8n.yaml' is an ultralytics model (no such file here, so the name of a config "
                          "ultralytics ships); reading it needs ultralytics, which is not installed; "
                          "pip install 'graphprune[ultralytics]'")


def test_a_yaml_that_is_not_an_ultralytics_model_is_one_line(tmp_path):
    (tmp_path / "config.yaml").write_text("lr: 0.1\nepochs: 3\n")
    assert_one_line_error(run_cli("explain", "config.yaml", cwd=str(tmp_path)),
                          "MODEL 'config.yaml' (.yaml) is a file graphprune does not recognise")


# -- --text on a factory model still needs --tokenizer; a Hugging Face directory brings its own -----------------------
def test_text_needs_a_tokenizer_unless_the_directory_has_one(files, tmp_path):
    factories = write_factories(tmp_path / "f")
    proc = run_cli("prune", "gp_cli_models.zoo:concat", "--input-shape", "1,3,8,8", "--ratio", "0.5", "--importance",
                   "activation", "--text", files / "lines.txt", "--out", tmp_path / "o", path=[factories])
    assert_one_line_error(proc, "--text needs --tokenizer DIR, the folder of the model's saved Hugging Face tokenizer "
                                "(a Hugging Face model directory with a tokenizer needs none)")
