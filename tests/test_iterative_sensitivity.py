"""Iterative pruning with a fine-tune callback, and sensitivity analysis."""
import pytest
import torch

import graphprune
from graphprune.errors import InputError
from graphprune.models import ZOO
from op_models import MHABlock, Residual, example_input


def test_iterative_ratio_reaches_the_share_and_keeps_every_plan():
    model = Residual().eval()
    x = example_input(Residual)
    calls = []

    def finetune(m, step):
        calls.append((step, sum(p.numel() for p in m.parameters())))

    result = graphprune.prune_iteratively(model, x, steps=3, ratio=0.5, finetune=finetune, target="none")
    assert len(result.plans) == 3 and [c[0] for c in calls] == [1, 2, 3]
    sizes = [c[1] for c in calls]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    assert result.model(x).shape == model(x).shape
    # 1 - (1 - 0.5)^(1/3) per step, ceil per group: at least half of a 16-channel group is gone
    assert result.model.get_submodule("stem.0").out_channels <= 8


def test_iterative_macs_target_lands_on_target():
    spec = ZOO["resnet56"]
    model, x = spec.build(), spec.example_inputs()
    macs = graphprune.prune_graph(model, x, ratio=0.0).report.macs_before
    result = graphprune.prune_iteratively(model, x, steps=2, target_macs=macs // 3, target="none")
    assert result.steps[-1].report.macs_after <= macs // 3
    assert result.steps[0].report.macs_after > macs // 3


def test_iterative_on_attention_keeps_pruning_heads():
    model = MHABlock().eval()
    x = example_input(MHABlock)
    result = graphprune.prune_iteratively(model, x, steps=2, ratio=0.5, target="none")
    heads = result.model.get_submodule("attn").num_heads
    assert heads <= 2 and result.model(x).shape == model(x).shape


def test_sensitivity_table_and_ratios():
    model = Residual().eval()
    x = example_input(Residual)
    reference = model(x).detach()

    @torch.no_grad()
    def metric(m):  # closeness to the unpruned output: 1 is unchanged
        return float(1.0 / (1.0 + (m(x) - reference).abs().mean()))

    table = graphprune.sensitivity(model, x, metric, ratios=(0.25, 0.5))
    assert table.baseline == pytest.approx(1.0)
    groups = {r.group for r in table.rows}
    assert len(groups) >= 3 and all(r.metric <= 1.0 for r in table.rows)
    ratios = table.ratios_for(max_drop=1.0)
    assert set(ratios) == groups and all(v == 0.5 for v in ratios.values())
    assert all(v == 0.0 for v in table.ratios_for(max_drop=-1.0).values())
    pruned = graphprune.prune_graph(model, x, ratio=0.0, ratios=ratios, target="none")
    assert pruned.report.params_after < pruned.report.params_before
    assert "baseline" in table.format_table()


def test_sensitivity_rejects_bad_ratios():
    with pytest.raises(InputError):
        graphprune.sensitivity(Residual(), example_input(Residual), lambda m: 0.0, ratios=(1.5,))
