"""A constant table sliced before it meets the channels prunes with them (ViT-MAE's embeddings).

ViT-MAE adds `position_embeddings[:, 1:, :]` to the patch tokens and `cls_token + position_embeddings[:, :1, :]`
to the class token: the parameter (1, tokens + 1, hidden) is sliced along the tokens, so the one whole dim of size
> 1 left, the hidden size, is where its channels are (rules/indexing.py `table_effect`); removing hidden channel c
removes column c of the table and of the class token, and no other element changes (exact in float64). It froze
under torch.export ("`slice` has no channel dim graphprune can follow"), because only a gather by positions read a
constant table so.
"""
import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.options import Ratio
from graphprune.verify import max_exactness_error
from conftest import without_dtype_asserts

TOKENS, WIDTH = 4, 8


class SlicedEmbeddings(nn.Module):
    """Patch tokens plus sliced position embeddings, a class token plus the first one, concatenated, then a head."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Linear(3, WIDTH)
        self.position = nn.Parameter(torch.randn(1, TOKENS + 1, WIDTH))
        self.cls = nn.Parameter(torch.randn(1, 1, WIDTH))
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, x):
        tokens = self.patch(x) + self.position[:, 1:, :]
        cls = (self.cls + self.position[:, :1, :]).expand(x.shape[0], -1, -1)
        return self.head(torch.cat([cls, tokens], dim=1).relu())


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_sliced_constant_table_prunes_with_the_channels_it_meets(frontend):
    torch.manual_seed(0)
    x = torch.randn(2, TOKENS, 3)
    analysis = graphprune.analyse(SlicedEmbeddings().eval(), (x,), frontend=frontend)
    graph = analysis.dependencies
    assert graph.unsupported == () and [g.size for g in graph.prunable] == [WIDTH], graph.frozen
    result = analysis.prune(Ratio(0.5), target="none")
    assert max_exactness_error(without_dtype_asserts(analysis.graph_module), analysis.example_inputs, result) <= 1e-5
    params = dict(result.model.named_parameters())
    assert params["position"].shape == (1, TOKENS + 1, WIDTH // 2) and params["cls"].shape == (1, 1, WIDTH // 2)
    module = result.module  # the caller's class, its parameters resized
    assert module.position.shape == (1, TOKENS + 1, WIDTH // 2)
    with torch.no_grad():
        assert torch.allclose(module(x), result.model(x), atol=1e-6)
