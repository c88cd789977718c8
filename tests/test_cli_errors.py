"""Bad models and inputs: one line on stderr naming the fix, exit 2, no files; the same checks for API callers."""
import os

import pytest
import torch

from graphprune.cli import one_line, toolchain_errors
from graphprune.errors import GraphPruneError, InputError
from graphprune.inputs import check_model_and_inputs
from cli_support import assert_one_line_error, run_cli, write_factories


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    return write_factories(tmp_path_factory.mktemp("factories"))


@pytest.mark.parametrize("factory, how", [("scripted", "torch.jit.script"), ("traced", "torch.jit.trace")])
def test_torchscript_model(tmp_path, factories, factory, how):
    proc = run_cli("prune", f"gp_cli_models.zoo:{factory}", "--ratio", "0.5", "--input-shape", "1,3,8,8",
                   "--out", tmp_path / "out", path=[factories])
    assert_one_line_error(proc, f"is a TorchScript module")
    assert how in proc.stderr and "Pass the original nn.Module" in proc.stderr
    assert os.listdir(tmp_path) == []


def test_empty_batch(tmp_path):
    proc = run_cli("prune", "resnet56", "--ratio", "0.5", "--input-shape", "0,3,32,32", "--out", tmp_path / "out")
    assert_one_line_error(proc, "has an empty dim 0 (size 0)")
    assert os.listdir(tmp_path) == []


def test_torch_error_is_cut_to_one_line(tmp_path, factories):
    """4 channels into a 3-channel conv: torch's message, without torch.fx's multi-line "While executing"."""
    proc = run_cli("prune", "gp_cli_models.zoo:concat", "--ratio", "0.5", "--input-shape", "1,4,8,8",
                   "--out", tmp_path / "out", path=[factories])
    assert_one_line_error(proc, "to have 3 channels, but got 4 channels instead")
    assert "While executing" not in proc.stderr and "tlparse" not in proc.stderr
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- in process


@pytest.mark.parametrize("model, inputs, fragment", [
    (torch.jit.script(torch.nn.Conv2d(3, 4, 1)), torch.randn(1, 3, 4, 4), "made by torch.jit.script"),
    (torch.jit.trace(torch.nn.Conv2d(3, 4, 1), torch.randn(1, 3, 4, 4)), torch.randn(1, 3, 4, 4),
     "made by torch.jit.trace"),
    (lambda x: x, torch.randn(1, 3, 4, 4), "must be a torch.nn.Module, got function"),
    (torch.nn.Conv2d(3, 4, 1), torch.randn(0, 3, 4, 4), "shape (0, 3, 4, 4): dim 0 is empty"),
    (torch.nn.Conv2d(3, 4, 1), (torch.randn(1, 3, 4, 4), torch.randn(1, 3, 0, 4)), "example input 1 has shape"),
    (torch.nn.Conv2d(3, 4, 1), torch.full((1, 3, 2, 2), float("nan")), "NaN or infinite"),
    (torch.nn.Conv2d(3, 4, 1), ([1, 2],), "example input 0 is a list: example_inputs must be a tensor or a tuple of tensors"),
    (torch.nn.Conv2d(3, 4, 1), (), "no example inputs"),
])
def test_check_model_and_inputs(model, inputs, fragment):
    with pytest.raises(InputError) as info:
        check_model_and_inputs(model, inputs)
    assert fragment in str(info.value)


def test_check_model_and_inputs_accepts_good_input():
    x = torch.randn(2, 3, 4, 4)
    assert check_model_and_inputs(torch.nn.Conv2d(3, 4, 1), x) == (x,)


def test_toolchain_errors_converts_torch_exceptions_only():
    conv = torch.nn.Conv2d(3, 4, 3)
    with pytest.raises(InputError) as info:
        with toolchain_errors(InputError, "running", "pass 3 channels"):
            conv(torch.randn(1, 5, 8, 8))
    assert str(info.value).startswith("running failed inside torch: RuntimeError: ")
    assert str(info.value).endswith("; pass 3 channels")
    with pytest.raises(ValueError):  # raised by our own code: a bug, not converted
        with toolchain_errors(InputError, "running", "fix"):
            raise ValueError("graphprune bug")


def test_one_line_drops_fx_noise_and_keeps_the_fix():
    cause = RuntimeError("bad shape\nC++ frame 1\nC++ frame 2")
    try:
        try:
            raise cause
        except RuntimeError as exc:
            raise InputError(f"node `x` failed: {exc}. Check the inputs.\n\nWhile executing %x\nOriginal traceback:") \
                from exc
    except GraphPruneError as err:
        assert one_line(err) == "node `x` failed: bad shape. Check the inputs."
