"""The rewrite passes follow torch.fx's pass protocol and fail inside the pass that broke the graph."""
import copy

import pytest
import torch
from torch.fx.passes.infra.pass_manager import PassManager

import graphprune
from graphprune.dependencies import build_dependency_graph as analyse
from graphprune.errors import RewriteError
from graphprune.passes import EliminateDeadCode, ShrinkChannels
from graphprune.rules import default_rules
from graphprune.rules.movement import ReshapeRule
from graphprune.trace import record_values, trace
from graphprune.verify import max_exactness_error
from op_models import ChannelShuffle, FlattenHead, example_input


def _prepared(cls):
    model = cls().eval()
    x = (example_input(cls),)
    rules = default_rules()
    gm = trace(copy.deepcopy(model), rules.has_module_rule)  # GraphModule shares submodules with its root
    record_values(gm, x)
    graph = analyse(gm, rules)
    plan = graphprune.prune_graph(model, x, ratio=0.5, target="none").plan  # no channel step: the same plan on any CPU
    return model, x, rules, gm, graph, plan


def test_passes_run_in_torch_pass_manager():
    model, x, rules, gm, graph, plan = _prepared(ChannelShuffle)
    pm = PassManager([ShrinkChannels(graph, plan, rules, x), EliminateDeadCode(x)])
    result = pm(gm)
    assert result.modified
    assert result.graph_module is gm
    assert sum(p.numel() for p in gm.parameters()) < sum(p.numel() for p in model.parameters())
    assert gm(*x).shape == model(*x).shape


def test_analysis_does_not_mutate():
    model, x, rules, gm, graph, plan = _prepared(ChannelShuffle)
    code, state = gm.code, copy.deepcopy(gm.state_dict())
    analyse(gm, rules)
    assert gm.code == code
    assert all(torch.equal(v, state[k]) for k, v in gm.state_dict().items())


class ForgetfulReshape(ReshapeRule):
    """A broken rule: never rewrites the literal sizes of view/reshape."""

    def shrink(self, node, ctx):
        return None


def test_broken_rewrite_fails_inside_the_pass_that_caused_it():
    model, x, _, gm, graph, plan = _prepared(FlattenHead)
    broken = default_rules().with_rule(torch.Tensor.reshape, ForgetfulReshape())
    with pytest.raises(RewriteError, match="ShrinkChannels"):
        ShrinkChannels(graph, plan, broken, x)(gm)


def test_clone_module_is_independent_and_keeps_sharing():
    from graphprune.copies import clone_module  # noqa: PLC0415

    model = ChannelShuffle().eval()
    model.shared = model.out  # the same module twice: its parameters must stay shared in the clone
    clone = clone_module(model)
    with torch.no_grad():
        clone.a[0].weight.add_(1.0)
    assert not torch.equal(clone.a[0].weight, model.a[0].weight)
    assert clone.shared is clone.out and clone.out is not model.out
    assert clone.out.weight is clone.shared.weight
    x = example_input(ChannelShuffle)
    assert torch.equal(clone_module(model)(x), model(x))
    clone.out.register_forward_hook(lambda *a: None)
    assert not model.out._forward_hooks
    clone.out.register_buffer("scale", torch.ones(1), persistent=False)
    assert "scale" not in model.out._non_persistent_buffers_set and "scale" not in model.out._buffers


def test_the_containers_fx_builds_are_in_the_modes_of_the_modules_they_stand_for():
    model = ChannelShuffle().eval()
    assert not any(m.training for m in trace(model).modules())
    model.train()
    model.a.eval()  # a Sequential: fx replaces it by a fresh container holding its called children
    gm = trace(model)
    assert type(gm.a) is torch.nn.Module and gm.training and not gm.a.training
    assert all(m.training is not name.startswith("a") for name, m in gm.named_modules())


def test_a_group_whose_rewrite_breaks_is_frozen_with_the_error_and_the_rest_is_pruned():
    """Never fail where we can freeze: prune_graph with a broken reshape rule still returns a correct model."""
    model, x = FlattenHead().eval(), (example_input(FlattenHead),)
    broken = default_rules().with_rule(torch.Tensor.reshape, ForgetfulReshape())
    good = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="fx")
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", rules=broken, frontend="fx")
    reasons = {g.id: g.frozen_reasons for g in result.report.frozen_groups}
    broke = [gid for gid, rs in reasons.items() if any("rewriting it broke the model's check" in r for r in rs)]
    assert broke and all("example_inputs" not in r for rs in reasons.values() for r in rs)
    assert set(broke) <= set(good.plan.keep) and not set(broke) & set(result.plan.keep)
    assert set(result.plan.keep) == set(good.plan.keep) - set(broke)  # every other group is still pruned
    assert result.model(*x).shape == model(*x).shape
    assert max_exactness_error(model, x, result) <= 1e-5


def test_dead_code_pass_removes_dead_nodes_and_the_submodules_only_they_used():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU())
            self.dead = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU())
            self.scale = torch.nn.Module()
            self.scale.w = torch.nn.Parameter(torch.ones(1, 4, 1, 1))
            self.attn = torch.nn.MultiheadAttention(4, 1, batch_first=True)  # one call_module with a child inside

        def forward(self, x):
            self.dead(x)  # computed, never read
            y = self.used(x) * self.scale.w
            tokens = y.flatten(2).transpose(1, 2)
            return y, self.attn(tokens, tokens, tokens)[0]

    x = (torch.randn(1, 3, 5, 5),)
    gm = trace(Branchy().eval())
    record_values(gm, x)
    expected = gm(*x)
    result = EliminateDeadCode(x)(gm)
    names = {n for n, _ in gm.named_modules()}
    assert result.modified
    assert not any(n.startswith("dead") for n in names)
    assert {"used", "used.0", "used.1", "scale", "attn", "attn.out_proj"} <= names  # called modules keep their
    # insides; get_attr keeps its owner
    assert all(torch.equal(a, b) for a, b in zip(gm(*x), expected))
    assert not EliminateDeadCode(x)(gm).modified  # nothing left to remove
