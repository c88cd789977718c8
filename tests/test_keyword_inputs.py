"""A model whose forward takes keyword inputs only: `example_kwargs` alone is a valid set of example inputs.

Both frontends trace it and its pruned model is called the caller's way, with keywords. Exactness:
at ratio 0 the pruned model equals the dense one; at ratio 0.5 it equals the dense model whose
dropped channels are zeroed (graphprune.verify). The keyword tensors are checked like positional
ones (empty dims, NaN), and "no example inputs given" comes only when both are empty.
"""
import copy
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune.errors import InputError
from graphprune.verify import zero_dropped_inputs

from conftest import randomize_norms


class KeywordOnly(nn.Module):
    """forward(self, *, x, y): two branches (one with BatchNorm) summed, then a head; nothing positional."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b, self.head = nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(6, 16), nn.Linear(16, 4)

    def forward(self, *, x, y):
        return self.head(F.relu(self.bn(self.a(x))) + F.relu(self.b(y)))


def _model_and_kwargs(batch=2):
    model = randomize_norms(KeywordOnly()).eval()
    return model, {"x": torch.randn(batch, 8), "y": torch.randn(batch, 6)}


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_keyword_only_model_at_ratio_0_equals_the_dense_model(frontend):
    model, kwargs = _model_and_kwargs()
    result = graphprune.prune_graph(model, (), example_kwargs=kwargs, ratio=0.0, frontend=frontend)
    assert result.report.frontend == frontend
    assert result.report.params_after == result.report.params_before
    with torch.no_grad():
        torch.testing.assert_close(result.model(**kwargs), model(**kwargs), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_keyword_only_model_pruned_at_half_runs_with_keywords_and_is_exact(frontend):
    model, kwargs = _model_and_kwargs()
    result = graphprune.prune_graph(model, None, example_kwargs=kwargs, ratio=0.5, frontend=frontend, target="none")
    assert result.plan.keep and result.report.params_after < result.report.params_before
    reference = zero_dropped_inputs(model, result.graph, result.plan).double()
    pruned = copy.deepcopy(result.model).double()
    as_double = {k: v.double() for k, v in kwargs.items()}
    with torch.no_grad():
        torch.testing.assert_close(pruned(**as_double), reference(**as_double), atol=1e-5, rtol=1e-4)
        expected = result.model(**kwargs)
        torch.testing.assert_close(result.module(**kwargs), expected, atol=1e-5, rtol=1e-4)  # the caller's class
        torch.testing.assert_close(result.exported.module()(**kwargs), expected, atol=1e-5, rtol=1e-4)


def test_analyse_takes_keyword_inputs_alone():
    model, kwargs = _model_and_kwargs()
    analysis = graphprune.analyse(model, (), example_kwargs=kwargs)
    assert analysis.frontend == "fx" and len(analysis.dependencies.prunable) == 1
    assert [t.shape for t in analysis.example_inputs] == [kwargs["x"].shape, kwargs["y"].shape]


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("kwargs, fragment", [
    ({}, "no example inputs given"),
    ({"x": torch.randn(2, 8), "y": torch.full((2, 6), float("nan"))}, "example_kwargs['y'] holds NaN or infinite"),
    ({"x": torch.randn(0, 8), "y": torch.randn(0, 6)}, "example_kwargs['x'] has shape (0, 8): dim 0 is empty"),
    ([torch.randn(2, 8)], "example_kwargs must be a dict of forward() argument name -> value, got list"),
])
def test_keyword_inputs_are_checked_like_positional_ones(frontend, kwargs, fragment):
    model, _ = _model_and_kwargs()
    with pytest.raises(InputError, match=re.escape(fragment)):
        graphprune.prune_graph(model, (), example_kwargs=kwargs, ratio=0.5, frontend=frontend)


class ExtraKeywords(nn.Module):
    """forward(self, x, **kwargs), as Hugging Face's image classifiers spell it: fx traces **kwargs as an input."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.head = nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4)

    def forward(self, x, **kwargs):
        return self.head(F.relu(self.bn(self.a(x))))


def test_a_forward_with_unread_var_keywords_traces_and_prunes_exactly():
    """`**kwargs` that forward never reads is no input of the graph (it was a missing one): the fx frontend prunes,
    exactly in float64, and `result.module` is the caller's class."""
    model, x = randomize_norms(ExtraKeywords()).eval(), torch.randn(2, 8)
    result = graphprune.prune_graph(model, (x,), ratio=0.5, frontend="fx", target="none")
    assert result.report.params_after < result.report.params_before
    reference = zero_dropped_inputs(model, result.graph, result.plan).double()
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(result.model).double()(x.double()), reference(x.double()),
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(result.module(x), result.model(x), atol=1e-5, rtol=1e-4)
