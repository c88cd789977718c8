"""explain's names and offsets, progress only on a terminal, --version, help for every option."""
import argparse
import json
import os
import pty
import subprocess
import sys

import pytest
import torch

import graphprune
from graphprune.cli import build_parser
from cli_support import cli_env, run_cli, write_factories


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    return write_factories(tmp_path_factory.mktemp("factories"))


def test_explain_shows_names_and_concat_offsets(factories):
    proc = run_cli("explain", "gp_cli_models.zoo:concat", "--input-shape", "1,3,8,8", path=[factories])
    assert proc.returncode == 0, proc.stderr
    blocks = proc.stdout.split("\ngroup ")
    concat = next(b for b in blocks if "  size 16  prunable" in b.splitlines()[0])
    members = {(w[0], w[1], w[2]): w for w in (line.split() for line in concat.splitlines()[1:])}
    assert sorted(members) == [("reads", "c", "weight"), ("stats", "bn", "running_mean,running_var"),
                               ("writes", "a", "bias,weight"), ("writes", "b", "bias,weight"),
                               ("writes", "bn", "bias,weight")]
    covered = {key[:2]: members[key][3:] for key in members}
    assert covered[("writes", "a")] == ["channels", "0-7", "of", "16"]
    assert covered[("writes", "b")] == ["channels", "8-15", "of", "16"]
    assert covered[("writes", "bn")] == ["channels", "0-15", "of", "16"]
    assert covered[("reads", "c")] == ["channels", "0-15", "of", "16"]


def test_explain_names_are_what_ignore_accepts(factories):
    """Every module explain prints as a writer, given to --ignore, keeps the channels it writes: a concat's
    input keeps its own slice (the other input still prunes), the BatchNorm after it keeps the whole group."""
    sys.path.insert(0, factories)
    try:
        from gp_cli_models.zoo import concat
    finally:
        sys.path.remove(factories)
    model, x = concat().eval(), torch.randn(1, 3, 8, 8)
    full = graphprune.prune_graph(model, x, ratio=0.5, round_to=1)
    concat = next(g.id for g in full.graph.groups if g.size == 16)
    assert concat in full.plan.keep
    for name, kept, pruned in (("a", range(8), range(8, 16)), ("b", range(8, 16), range(8)), ("bn", range(16), ())):
        result = graphprune.prune_graph(model, x, ratio=0.5, round_to=1, ignore=[name])
        group = result.graph.group(concat)
        keep = set(result.plan.keep.get(concat, range(16)))
        assert set(kept) <= keep and len(keep) == len(kept) + len(pruned) // 2, name  # the rest pruned by half
        reasons = group.frozen_reasons + tuple(p.reason for p in group.pins)
        assert reasons == ("output channels kept by `ignore`",), name
        assert group.frozen == (name == "bn"), name


def _run_on_terminal(*args, path=()):
    """Run the CLI with stderr on a pseudo-terminal; returns (returncode, stderr text)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "graphprune", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=slave, env=cli_env(*path))
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(), b"".join(chunks).decode()


def test_progress_only_on_a_terminal(factories):
    args = ("explain", "gp_cli_models.zoo:concat", "--input-shape", "1,3,8,8")
    code, err = _run_on_terminal(*args, path=[factories])
    assert code == 0
    assert "[graphprune] tracing and analysing gp_cli_models.zoo:concat ..." in err
    code, err = _run_on_terminal(*args, "--quiet", path=[factories])
    assert code == 0 and err == ""
    # stderr as a pipe: see test_cli.py::test_prune_writes_every_artifact (stderr == "")


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith(f"graphprune ") and f"torch {torch.__version__}" in proc.stdout


def test_every_option_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, sub in subparsers.choices.items() for action in sub._actions
               if not action.help and not isinstance(action, argparse._HelpAction)]
    assert missing == []
    assert sorted(subparsers.choices) == ["apply", "bench", "demo", "explain", "prune", "recover"]


def test_every_builtin_importance_is_offered():
    from graphprune.importance import BUILTIN
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    importance = next(a for a in subparsers.choices["prune"]._actions if a.dest == "importance")
    assert sorted(importance.choices) == sorted(BUILTIN)


def test_activation_importance_on_random_batches(tmp_path, factories):
    out = tmp_path / "out"
    proc = run_cli("prune", "gp_cli_models.zoo:concat", "--input-shape", "1,3,8,8", "--ratio", "0.5", "--round-to", "1",
                   "--importance", "activation", "--calibration-batches", "2", "--out", out, path=[factories])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "report.json").read_text())
    assert summary["importance"] == "activation" and summary["calibration_batches"] == 2
    assert summary["report"]["params_after"] < summary["report"]["params_before"]


def test_report_names_the_resolved_target_and_verbose_lists_every_rounding(tmp_path):
    out = tmp_path / "r56"
    proc = run_cli("prune", "resnet56", "--ratio", "0.3", "--round-to", "24", "--verbose", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "report.json").read_text())
    assert summary["target"] == summary["report"]["target"] == "round_to=24"
    assert summary["target_requested"] == "auto"
    rounded = [g for g in summary["report"]["groups"]
               if g["asked_before_rounding"] not in (None, g["channels_after"])]
    assert len(rounded) > 4
    assert all(f"{g['id']} {g['asked_before_rounding']}->{g['channels_after']}" in proc.stdout for g in rounded)
    assert "summary(full=True) lists all" not in proc.stdout


def test_every_command_describes_model_in_whole_words():
    """The MODEL help is one sentence that commands extend; clipping its ends once left "recognised from what it i"."""
    from graphprune.cli.parsing import MODEL_HELP, build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("prune", "apply", "explain", "bench"):  # recover takes a RUN_DIR
        model = next(a for a in commands[name]._actions if a.metavar in ("MODEL", "MODEL_OR_ONNX"))
        assert MODEL_HELP in model.help, name


def test_parity_on_outputs_below_the_tolerance_is_flagged(tmp_path, factories):
    """ORT parity within 1e-4 of outputs that are all smaller than that shows little: prune says so, and
    report.json keeps the largest output; a model with outputs of ordinary size gets no such line."""
    lines = {}
    for name in ("whisper", "concat"):
        proc = run_cli("prune", f"gp_cli_models.zoo:{name}", "--input-shape", "1,3,8,8", "--ratio", "0.5",
                       "--out", tmp_path / name, path=[factories])
        assert proc.returncode == 0, proc.stderr
        lines[name] = [line for line in proc.stdout.splitlines() if line.startswith("warning: the pruned model's outputs")]
        largest = json.loads((tmp_path / name / "report.json").read_text())["onnx"]["pruned_largest_output"]
        assert (largest < 1e-6) if name == "whisper" else (largest > 1e-3), (name, largest)
    assert len(lines["whisper"]) == 1 and "so this parity shows little" in lines["whisper"][0]
    assert lines["concat"] == []
