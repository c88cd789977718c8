"""Every built-in model prunes, runs, keeps its output shapes, exports to ONNX with ORT parity and is exact.

The fast suite covers a few small models; `pytest -m slow` sweeps the whole zoo.
"""
import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.export import export_onnx
from graphprune.models import ZOO
from graphprune.planner import PrunePlan
from graphprune.verify import max_exactness_error
from conftest import randomize_norms

FAST = ("resnet56", "squeezenet1_1", "vit_tiny", "shufflenet_v2_x1_0")
SLOW = tuple(sorted(set(ZOO) - set(FAST)))
VIT_STYLE = ("vit_b_16", "vit_tiny")


def _shapes(out):
    return [t.shape for t in out] if isinstance(out, tuple) else [out.shape]


def _exact_plan(model: nn.Module, result) -> PrunePlan:
    """The plan without groups that pass through a LayerNorm (it normalises over the pruned dim: not exact)."""
    norm_params = {f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, nn.LayerNorm) for p in ("weight", "bias")}
    keep = {gid: k for gid, k in result.plan.keep.items()
            if not any(s.name in norm_params for s in result.graph.group(gid).members)}
    return PrunePlan(keep, {gid: result.plan.sizes[gid] for gid in keep})


def check_model(name: str, ratio: float, tmp_path) -> None:
    spec = ZOO[name]
    model = randomize_norms(spec.build()).eval()
    inputs = spec.example_inputs()
    result = graphprune.prune_graph(model, inputs, ratio=ratio, target="none")  # the ratio alone
    report = result.report
    with torch.no_grad():
        assert _shapes(result.model(*inputs)) == _shapes(model(*inputs))
    assert report.params_after == sum(p.numel() for p in result.model.parameters())
    assert report.params_before - report.params_after == sum(g.params_removed for g in report.groups) + report.params_removed_dead_code
    for g in report.frozen_groups:  # the zoo must be fully understood: only its inputs and outputs are frozen, and
        # groups whose parts the model's own code splits equally (chunk) where no equal counts exist (codesizes.py)
        assert all("model input" in r or "model output" in r or "sizes the code computes from the width" in r
                   for r in g.frozen_reasons), (g.id, g.frozen_reasons)
    assert report.removed_channels >= ratio * report.prunable_channels
    if ratio == 0.5 and name not in VIT_STYLE:
        assert report.params_after <= 0.6 * report.params_before
    export = export_onnx(result.model, inputs, str(tmp_path / f"{name}.onnx"))  # raises above atol 1e-4, rtol 1e-3
    assert export.file_bytes > 0
    deployed = graphprune.prune_graph(model, inputs, ratio=ratio)  # the default target's rounding
    with torch.no_grad():
        assert _shapes(deployed.model(*inputs)) == _shapes(model(*inputs))
    export_onnx(deployed.model, inputs, str(tmp_path / f"{name}-deployed.onnx"))
    exact = graphprune.apply_plan(model, inputs, _exact_plan(model, result))
    assert exact.plan.keep or name in VIT_STYLE
    assert max_exactness_error(model, inputs, exact) <= 1e-5


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", FAST)
def test_small_zoo_models(name, ratio, tmp_path):
    check_model(name, ratio, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", SLOW)
def test_zoo_sweep(name, ratio, tmp_path):
    check_model(name, ratio, tmp_path)
