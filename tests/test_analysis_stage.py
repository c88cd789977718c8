"""The analysis stage: one immutable Analysis shared by planning, rewriting, explain and sensitivity."""
import copy

import pytest
import torch

import graphprune
from graphprune import trace as trace_mod
from graphprune.errors import RuleError
from graphprune.rules import default_rules
from graphprune.rules.conv import ConvModule, ConvRule
from op_models import ConvChain, Residual, example_input


class TraceCounter:
    def __init__(self, monkeypatch):
        self.calls = 0
        original = trace_mod.LeafTracer.trace

        def counted(tracer, *args, **kwargs):
            self.calls += 1
            return original(tracer, *args, **kwargs)
        monkeypatch.setattr(trace_mod.LeafTracer, "trace", counted)


def test_apply_never_mutates_the_analysis_and_plans_are_independent():
    model = Residual().eval()
    analysis = graphprune.analyse(model, example_input(Residual))
    code, state = analysis.graph_module.code, copy.deepcopy(analysis.graph_module.state_dict())
    half = analysis.prune(graphprune.Ratio(0.5), target="none")
    quarter = analysis.prune(graphprune.Ratio(0.25), target="none")
    assert analysis.graph_module.code == code
    assert all(torch.equal(v, state[k]) for k, v in analysis.graph_module.state_dict().items())
    assert half.report.params_after < quarter.report.params_after < analysis.stats.params
    assert (analysis.predict(half.plan).params, analysis.predict(half.plan).macs) == (
        half.report.params_after, half.report.macs_after)


def test_a_pruned_model_owns_its_tensors_even_where_a_plan_keeps_them_whole():
    """Rewrites share the analysed tensors until slicing is done, then copy the unsliced ones: training or
    recalibrating the result never writes into the analysis."""
    model = Residual().eval()
    analysis = graphprune.analyse(model, example_input(Residual))
    state = copy.deepcopy(analysis.graph_module.state_dict())
    batches = [(torch.randn_like(example_input(Residual)),) for _ in range(2)]
    result = analysis.prune(graphprune.Ratio(0.25), target="none", calibration=graphprune.Calibration(
        batches, recalibrate_bn=True))
    analysed = {t.data_ptr() for t in (*analysis.graph_module.parameters(), *analysis.graph_module.buffers())}
    assert not any(t.data_ptr() in analysed for t in (*result.model.parameters(), *result.model.buffers()))
    with torch.no_grad():
        for p in result.model.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, state[k]) for k, v in analysis.graph_module.state_dict().items())


def _storages(module):
    return {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers())}


def test_the_analysis_views_the_callers_parameters_and_a_pruned_model_shares_no_storage_with_them():
    """The fx trace copies no weight: its parameters are new Parameter objects over the caller's storage (own
    flags and gradients), its buffers are copies; the rewrite copies what it does not slice. A data-driven
    criterion (gradients, requires_grad toggled) and a pruned model trained in place leave the caller's alone."""
    model = Residual().eval()
    model.head.bias.requires_grad_(False)
    x = example_input(Residual)
    before = copy.deepcopy(model.state_dict())
    analysis = graphprune.analyse(model, x)
    theirs = dict(model.named_parameters())
    for name, p in analysis.graph_module.named_parameters():
        assert p is not theirs[name] and p.untyped_storage().data_ptr() == theirs[name].untyped_storage().data_ptr()
    assert not {b.untyped_storage().data_ptr() for b in analysis.graph_module.buffers()} & _storages(model)
    calibration = [(x, torch.randn_like(model(x))) for _ in range(2)]
    result = analysis.prune(graphprune.Ratio(0.25), graphprune.Strategy(importance="taylor"), target="none",
                            calibration=graphprune.Calibration(calibration, lambda out, y: (out - y).square().mean()))
    assert result.plan.keep and not _storages(result.model) & _storages(model)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [n != "head.bias" for n, _ in model.named_parameters()]
    with torch.no_grad():
        for t in (*result.model.parameters(), *result.model.buffers()):
            t.add_(1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_sensitivity_and_explain_from_one_analysis_never_retrace(monkeypatch):
    model = ConvChain().eval()
    analysis = graphprune.analyse(model, example_input(ConvChain))
    counter = TraceCounter(monkeypatch)
    table = graphprune.sensitivity(analysis, None, lambda m: 1.0, ratios=(0.25, 0.5))
    text = analysis.explain()
    assert counter.calls == 0
    assert len(table.rows) == 2 * len(analysis.dependencies.prunable) > 0
    assert f"{len(analysis.dependencies.prunable)} prunable" in text


def test_sensitivity_of_a_model_traces_once(monkeypatch):
    counter = TraceCounter(monkeypatch)
    graphprune.sensitivity(ConvChain().eval(), example_input(ConvChain), lambda m: 1.0, ratios=(0.25, 0.5, 0.75))
    assert counter.calls == 1


class BrokenConvRule(ConvRule):
    def couple(self, node, ctx):
        raise ValueError("boom")


def test_a_failing_rule_raises_with_the_node_named_in_strict_mode_and_freezes_otherwise(monkeypatch):
    model, x = ConvChain().eval(), example_input(ConvChain)
    rules = default_rules().with_rule(torch.nn.Conv2d, BrokenConvRule(ConvModule()))
    with pytest.raises(RuleError, match=r"BrokenConvRule failed on `\w+` \(module `[\w.]+`: Conv2d\): ValueError: boom"):
        graphprune.analyse(model, x, rules=rules, strict=True, frontend="fx")
    monkeypatch.delenv("GRAPHPRUNE_RULE_ERRORS")
    analysis = graphprune.analyse(model, x, rules=rules, frontend="fx")
    assert analysis.dependencies.prunable == ()
    assert any("BrokenConvRule failed (ValueError: boom)" in r for g in analysis.dependencies.frozen
               for r in g.frozen_reasons)


def test_options_validate_themselves():
    with pytest.raises(graphprune.GraphPruneError, match="scope must be"):
        graphprune.Strategy(scope="everywhere")
    with pytest.raises(graphprune.GraphPruneError, match=r"ratio must be a number in \[0, 1\)"):
        graphprune.Ratio(1.5)
    with pytest.raises(graphprune.GraphPruneError, match="recalibrate_bn=True needs calibration"):
        graphprune.Calibration(recalibrate_bn=True)


def test_graphml_export_holds_one_connected_component_per_group(tmp_path):
    """DependencyGraph.to_graphml: every member slot is a node tagged with its group, and the coupling edges
    connect exactly the slots of one group (the groups ARE the connected components)."""
    import networkx as nx

    analysis = graphprune.analyse(Residual().eval(), example_input(Residual))
    path = tmp_path / "slots.graphml"
    analysis.dependencies.to_graphml(str(path))
    g = nx.read_graphml(path)
    members = {str(s): grp.id for grp in analysis.dependencies.groups for s in grp.members}
    assert set(g.nodes) == set(members)
    assert all(g.nodes[n]["group"] == members[n] for n in g.nodes)
    components = [{g.nodes[n]["group"] for n in c} for c in nx.connected_components(g)]
    assert all(len(c) == 1 for c in components)  # no edge crosses two groups
    assert sorted(next(iter(c)) for c in components) == sorted(grp.id for grp in analysis.dependencies.groups)
