"""prune_checkpoint's progress (issue 24, item 4): per-shard and per-layer events with an ETA, and a run stopped
mid-way, by an error, Ctrl-C or SIGTERM, leaves neither the output nor a staging directory behind."""
import math
import os
import sys
import time

import pytest
import torch

from graphprune.checkpoint import ProgressEvent, Stage, prune_checkpoint
from graphprune.cli import main

os.environ["HF_HUB_OFFLINE"] = "1"
T = pytest.importorskip("transformers")
sys.path.insert(0, os.path.dirname(__file__))
from test_checkpoint_stream import _llama  # noqa: E402

SHARDS = 6  # the tiny Llama in shards of at most 20 KB


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    src = str(tmp_path_factory.mktemp("progress") / "src")
    _llama(tied=False).save_pretrained(src, max_shard_size="20KB")
    assert sum(n.endswith(".safetensors") for n in os.listdir(src)) == SHARDS
    return src


def _batches():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 64, (2, 8), generator=g) for _ in range(2)]


def test_eta_is_the_stage_rate_so_far():
    event = ProgressEvent(Stage.WRITING, step=1, steps=4, done=25, total=100, elapsed=10.0)
    assert event.eta == 30.0  # 10 s for 25 bytes: 75 left take 30 s
    assert ProgressEvent(Stage.WRITING, 4, 4, 100, 100, 41.0).eta == 0.0
    assert ProgressEvent(Stage.SCORING, 0, 4, 0, 100, 1.0).eta == math.inf
    assert event.line() == "writing: shard 1/4, 0.00/0.00 MiB, 10 s elapsed, ETA 30 s"
    big = ProgressEvent(Stage.SCORING, 2, 4, 3 * 2**30, 6 * 2**30, 41.0)
    assert big.line() == "scoring: shard 2/4, 3.00/6.00 GiB, 41 s elapsed, ETA 41 s"
    calibrated = ProgressEvent(Stage.CALIBRATION, 3, 22, 3, 22, 6.0)
    assert calibrated.line() == "calibration: layer 3/22, 6 s elapsed, ETA 38 s"


@pytest.mark.slow  # a Wanda prune_checkpoint: about 15 s on 2 shared cores
def test_wanda_events_are_monotone_and_reach_the_totals(source, tmp_path):
    """Calibration one event per decoder layer, then scoring and writing one per shard; counts only grow, the
    last event of a stage reaches its total, and the last write's total is the bytes written."""
    events = []
    result = prune_checkpoint(source, tmp_path / "out", ratio=0.5, importance="wanda", calibration=_batches(),
                              target="none", progress=events.append)
    stages = [e.stage for e in events]
    assert stages == [Stage.CALIBRATION] * 2 + [Stage.SCORING] * SHARDS + [Stage.WRITING] * SHARDS
    for stage in Stage:
        mine = [e for e in events if e.stage is stage]
        assert [e.step for e in mine] == list(range(1, len(mine) + 1)) and mine[-1].step == mine[-1].steps
        assert all(a.done < b.done and a.elapsed <= b.elapsed for a, b in zip(mine, mine[1:]))
        assert all(e.total == mine[0].total and 0 <= e.eta < math.inf for e in mine)
        assert mine[-1].done == mine[-1].total and mine[-1].eta == 0
    writes = [e for e in events if e.stage is Stage.WRITING]
    assert writes[-1].total == result.bytes_written == sum(
        os.path.getsize(os.path.join(result.path, n)) for n in result.files if n.endswith(".safetensors")
    ) - sum(_header_bytes(os.path.join(result.path, n)) for n in result.files if n.endswith(".safetensors"))
    assert [e for e in events if e.stage is Stage.CALIBRATION][-1].total == 2  # the tiny Llama's 2 layers


def _header_bytes(path: str) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


@pytest.mark.parametrize("stage, error", [
    (Stage.SCORING, RuntimeError),
    pytest.param(Stage.WRITING, KeyboardInterrupt, marks=pytest.mark.slow),  # a whole run but the last 5 shards
])
def test_a_run_stopped_mid_stage_leaves_no_output_and_no_staging(source, tmp_path, stage, error):
    """The callback raises on the stage's first step (shard 1 of 6 scored, or written): the error comes out as
    it is, and neither `out` nor a .graphprune-* staging directory is left in its parent."""
    seen = []

    def stop(event):
        seen.append(event)
        if event.stage is stage:
            raise error("stopped by the test")

    with pytest.raises(error, match="stopped by the test"):
        prune_checkpoint(source, tmp_path / "out", ratio=0.5, progress=stop)
    assert seen[-1].stage is stage and seen[-1].step == 1 < SHARDS
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # a whole prune_checkpoint: about 10 s on 2 shared cores
def test_the_cli_prints_one_progress_line_per_shard_and_exits_0(source, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # progress lines are for a terminal
    assert main(["prune", source, "--stream", "--ratio", "0.5", "--target", "none",
                 "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("[graphprune] ")]
    assert [line.split(":")[0] for line in lines[1:]] == ["[graphprune] scoring"] * SHARDS + \
        ["[graphprune] writing"] * SHARDS, captured.err
    assert lines[-1].startswith(f"[graphprune] writing: shard {SHARDS}/{SHARDS}, ") and "ETA 0 s" in lines[-1]
    assert captured.out.startswith("wrote ") and len(captured.out.splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["out"]


def _read_until(fd: int, wanted, seconds: float) -> str:
    """What the pseudo-terminal `fd` shows until `wanted(text so far)` holds, the writer closes it, or time runs out."""
    import select

    text, deadline = "", time.monotonic() + seconds
    while not wanted(text) and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: every writer has closed it
                break
            if not chunk:
                break
            text += chunk.decode(errors="replace")
    return text


@pytest.mark.slow  # a subprocess that imports graphprune and starts the export: about 15 s on 2 shared cores
def test_sigterm_mid_run_exits_143_and_leaves_no_staging_directory(source, tmp_path):
    """`graphprune prune DIR --stream` with stderr on a terminal: once its progress line is out and its staging
    directory exists, SIGTERM; the run unwinds (exit 143, one line) and removes the staging directory."""
    import pty
    import signal
    import subprocess

    from cli_support import cli_env

    work = tmp_path / "work"
    work.mkdir()
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "graphprune", "prune", source, "--stream", "--ratio", "0.5",
                             "--out", str(work / "out")], stdout=subprocess.DEVNULL, stderr=slave, env=cli_env())
    os.close(slave)
    try:
        text = _read_until(master, lambda t: "[graphprune] pruning" in t, 300)
        assert "[graphprune] pruning" in text, text
        deadline = time.monotonic() + 60
        while not any(n.startswith(".graphprune-") for n in os.listdir(work)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [n for n in os.listdir(work) if n.startswith(".graphprune-")], "no staging directory appeared"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
        text += _read_until(master, lambda t: False, 5)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert code == 143, text
    assert "graphprune: terminated (SIGTERM)" in text and "Traceback" not in text, text
    assert os.listdir(work) == []
