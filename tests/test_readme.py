"""The README's CLI quick start, pasted into a fresh directory in order, works; the measured tables it links
(docs/benchmarks.md) name scripts that exist."""
import os
import pathlib
import re
import shlex

import pytest

from cli_support import run_cli

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


def test_the_benchmark_tables_are_linked_and_their_scripts_exist():
    """The tables moved to docs/benchmarks.md with their commands: the README links the page, and every
    `python bench/...` or `examples/...` script either file names is in the repository."""
    assert "](docs/benchmarks.md)" in README.read_text()
    scripts = set()
    for page in (README, BENCHMARKS):
        scripts |= set(re.findall(r"\b((?:bench|examples)/[a-z_]+\.py)\b", page.read_text()))
    assert {"bench/zoo_table.py", "bench/latency_targets.py", "examples/minilm_fidelity.py"} <= scripts
    assert sorted(s for s in scripts if not (REPO / s).is_file()) == []
