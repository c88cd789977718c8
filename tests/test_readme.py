"""The README's CLI quick start, pasted into a fresh directory in order, works; the measured tables it links
(docs/benchmarks.md) name scripts that exist."""
import importlib.util
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from cli_support import assert_one_line_error, cli_env, run_cli

REPO = pathlib.Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BENCHMARKS = REPO / "docs" / "benchmarks.md"


def quick_start_commands() -> list[list[str]]:
    """The `graphprune ...` lines of the README's "Quick start: CLI" block, comments removed."""
    text = README.read_text()
    block = text.split("## Quick start: CLI", 1)[1].split("```", 2)[1]
    commands = [shlex.split(line, comments=True) for line in block.splitlines()]
    return [c for c in commands if c and c[0] == "graphprune"]


def test_the_block_is_found():
    commands = quick_start_commands()
    assert len(commands) >= 6 and {c[1] for c in commands} >= {"prune", "apply", "explain", "bench", "demo"}


@pytest.mark.parametrize("with_demo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["no-demo", "all"])
def test_readme_cli_commands_run_in_order_in_a_fresh_directory(tmp_path, with_demo):
    for command in quick_start_commands():
        if command[1] == "demo" and not with_demo:
            continue  # ResNet-50 pruned, exported and benchmarked: the slow run covers it
        proc = run_cli(*command[1:], cwd=str(tmp_path))
        assert proc.returncode == 0, (command, proc.stderr)
    assert os.path.isfile(tmp_path / "out" / "r18" / "model.onnx")
    assert os.path.isfile(tmp_path / "out" / "bench.json")


def walkthrough() -> tuple[str, list[list[str]]]:
    """The "Prune your own model from the shell" section: its make_inputs.py and its shell lines, comments removed."""
    section = README.read_text().split("## Prune your own model from the shell", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.S)
    script = next(body for lang, body in blocks if lang == "python")
    shell = next(body for lang, body in blocks if lang == "")
    commands = [shlex.split(line, comments=True) for line in shell.splitlines()]
    return script, [c for c in commands if c]


def _extra(command: list[str]) -> str | None:
    """The optional library a walk-through command's MODEL needs."""
    model = command[2]
    return "timm" if model.startswith("timm:") else "ultralytics" if model.endswith((".yaml", ".pt")) else None


def test_the_walkthrough_covers_every_input_kind():
    script, commands = walkthrough()
    assert "torch.export.save" in script and "save_pretrained" in script
    models = {c[2] for c in commands if c[0] == "graphprune" and c[1] != "bench"}
    assert {"tiny.pt2", "tiny-llama", "timm:resnet18", "yolo.yaml"} <= models
    flags = {f for c in commands for f in c if f.startswith("--")}
    assert {"--images", "--text", "--target-params", "--target-macs", "--ratio"} <= flags
    assert any(c[1] == "bench" and "out/pt2/model.pt2" in c for c in commands)


@pytest.mark.slow  # 35 s and more: every input kind through the CLI (make test stays under 10 minutes)
@pytest.mark.parametrize("every", [False, True], ids=["prune", "all"])
def test_the_walkthrough_runs_in_a_fresh_directory(tmp_path, every):
    """make_inputs.py, then every command in order; a command whose extra is missing gives its one-line error.
    make test runs make_inputs.py and the prune lines of the .pt2 and of the extras (~30 s of CPU in all); -m slow
    adds explain, apply, bench and the Hugging Face directory (the export frontend, two ONNX exports of a Llama)."""
    script, commands = walkthrough()
    (tmp_path / "make_inputs.py").write_text(script)
    for command in commands:
        if command[0] == "python":
            done = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=cli_env(), capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, done.stderr
            continue
        if not every and (command[1] != "prune" or command[2] == "tiny-llama"):
            continue
        proc = run_cli(*command[1:], cwd=str(tmp_path))
        extra = _extra(command)
        if extra and importlib.util.find_spec(extra) is None:
            assert_one_line_error(proc, f"pip install 'graphprune[{extra}]'")
        else:
            assert proc.returncode == 0, (command, proc.stderr)
    report = json.loads((tmp_path / "out" / "pt2-images" / "report.json").read_text())
    assert report["calibration_data"] == "images" and report["target_params"] == 6000
    assert report["report"]["params_after"] <= 6000 < report["report"]["params_before"]
    if every:
        assert os.path.isfile(tmp_path / "out" / "pt2-replayed" / "model.pt2")
        assert os.path.isfile(tmp_path / "out" / "llama" / "hf" / "config.json")
        assert json.loads((tmp_path / "out" / "llama" / "report.json").read_text())["native"]["format"] == \
            "save_pretrained"


def test_the_benchmark_tables_are_linked_and_their_scripts_exist():
    """The tables moved to docs/benchmarks.md with their commands: the README links the page, and every
    `python bench/...` or `examples/...` script either file names is in the repository."""
    assert "](docs/benchmarks.md)" in README.read_text()
    scripts = set()
    for page in (README, BENCHMARKS):
        scripts |= set(re.findall(r"\b((?:bench|examples)/[a-z_]+\.py)\b", page.read_text()))
    assert {"bench/zoo_table.py", "bench/latency_targets.py", "examples/minilm_fidelity.py"} <= scripts
    assert sorted(s for s in scripts if not (REPO / s).is_file()) == []
