"""graphprune recover and prune --recover-steps, from the shell: real files, one-line errors."""
import json

import numpy as np
import pytest
import torch

from cli_support import run_cli, write_factories

pytest.importorskip("PIL")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    from PIL import Image
    directory = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k in range(24):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype("uint8")).save(directory / f"{k:02d}.png")
    (directory / "notes.txt").write_text("not an image")  # skipped
    return directory


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    return write_factories(tmp_path_factory.mktemp("factories"))


def _prune(out, factories, *extra):
    return run_cli("prune", "gp_cli_models.zoo:concat", "--input-shape", "1,3,16,16", "--ratio", "0.5",
                   "--target", "none", "--out", out, "-q", *extra, path=[factories])


def test_recover_a_pruned_run_on_images_writes_fidelity_and_a_reloadable_model(tmp_path, image_dir, factories):
    assert _prune(tmp_path / "run", factories).returncode == 0
    done = run_cli("recover", tmp_path / "run", "--images", image_dir, "--steps", "4", "--batch-size", "4",
                   "--out", tmp_path / "rec", "-q", path=[factories])
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "rec" / "report.json").read_text())
    before, after = report["recovery"]["before"], report["recovery"]["after"]
    assert report["report"]["recovery"]["after"] == after and report["recovery"]["steps"] == 4
    assert before["rows"] == after["rows"] == 4 * 4 * 16  # one held-out batch of 4 images: rows of (4, 4, 16, 16)
    assert "top-1 agreement" in done.stdout and "before -> after recovery" in done.stdout
    program = torch.export.load(str(tmp_path / "rec" / "model.pt2"))
    assert program.module()(torch.randn(1, 3, 16, 16)).shape == (1, 4, 16, 16)


def test_prune_chains_recovery_with_recover_steps(tmp_path, image_dir, factories):
    done = _prune(tmp_path / "run", factories, "--recover-steps", "2", "--images", image_dir, "--batch-size", "8")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "report.json").read_text())["recovery"]["steps"] == 2


@pytest.mark.parametrize("case, needle", [
    ("no_images_dir", "is not a directory"),
    ("not_a_run", "report.json"),
    ("steps_without_images", "--recover-steps needs --images"),
    ("mean_of_wrong_length", "gives 2 values"),
])
def test_recovery_errors_are_one_line(tmp_path, image_dir, factories, case, needle):
    run = tmp_path / "run"
    if case in ("no_images_dir", "mean_of_wrong_length"):
        assert _prune(run, factories).returncode == 0
    if case == "steps_without_images":
        done = _prune(tmp_path / "x", factories, "--recover-steps", "2")
    else:
        images = tmp_path / "missing" if case == "no_images_dir" else image_dir
        extra = ["--mean", "0.5,0.5"] if case == "mean_of_wrong_length" else []
        done = run_cli("recover", run if case != "not_a_run" else tmp_path, "--images", images, "--steps", "2",
                       "--out", tmp_path / "rec", *extra, path=[factories])
    assert done.returncode == 2 and needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "rec").exists() and not (tmp_path / "x").exists()
