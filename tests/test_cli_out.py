"""--out: checked before any work, never half-written, never silently merged into or deleted."""
import os

import pytest

from cli_support import assert_one_line_error, run_cli

# importing this module leaves a trace: proves --out is checked before MODEL is even loaded
MARKER_FACTORY = '''
import os
open(os.environ["GP_MARKER"], "w").close()

def make():
    raise AssertionError("never called")
'''


@pytest.fixture
def marker_model(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "marked.py").write_text(MARKER_FACTORY)
    marker = tmp_path / "imported"
    monkeypatch.setenv("GP_MARKER", str(marker))
    return pkg, marker


def _prune(out, *extra, cwd=None, path=()):
    return run_cli("prune", "marked:make", "--ratio", "0.5", "--input-shape", "1,3,8,8", "--out", out, *extra,
                   cwd=cwd, path=path)


def test_non_empty_out_is_refused_without_force(tmp_path, marker_model):
    pkg, marker = marker_model
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = _prune(out, path=[pkg])
    assert_one_line_error(proc, "exists and is not empty; pass --force")
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert not marker.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".graphprune-")]


def test_out_under_a_regular_file(tmp_path, marker_model):
    """Root ignores permission bits, so unwritability is made with a path under a regular FILE."""
    pkg, marker = marker_model
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = _prune(blocker / "sub" / "out", path=[pkg])
    assert_one_line_error(proc, "cannot write to")
    assert "is a file, not a directory" in proc.stderr
    assert not marker.exists()
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_out_in_a_place_even_root_cannot_write(tmp_path, marker_model):
    """/proc refuses mkdir for every user, root included: the staging directory cannot be created."""
    pkg, marker = marker_model
    proc = _prune("/proc/graphprune-test/out", path=[pkg])
    assert_one_line_error(proc, "cannot write to '/proc/graphprune-test/out'")
    assert not marker.exists()


def test_out_that_is_a_file(tmp_path, marker_model):
    pkg, marker = marker_model
    target = tmp_path / "out"
    target.write_text("x")
    proc = _prune(target, "--force", path=[pkg])
    assert_one_line_error(proc, "exists and is not a directory")
    assert target.read_text() == "x" and not marker.exists()


def test_force_never_deletes_the_working_directory(tmp_path, marker_model):
    pkg, marker = marker_model
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("precious")
    proc = _prune(".", "--force", cwd=work, path=[pkg])
    assert_one_line_error(proc, "--force would delete")
    assert os.listdir(work) == ["notes.txt"] and not marker.exists()


def test_failure_after_staging_leaves_nothing(tmp_path, marker_model):
    """The factory fails after --out was staged: no output, no staging directory, no created parents."""
    pkg, marker = marker_model
    out = tmp_path / "new" / "out"
    proc = _prune(out, path=[pkg])
    assert_one_line_error(proc, "factory marked:make raised AssertionError")
    assert marker.exists()  # the model was loaded, so staging had been created
    assert sorted(os.listdir(tmp_path)) == ["imported", "pkg"]
