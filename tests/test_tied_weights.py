"""Tied weights (an embedding shared with the output projection) stay tied, and their channels are coupled."""
import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.verify import max_exactness_error


class TinyLM(nn.Module):
    def __init__(self, vocab=50, hidden=16, inner=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.up, self.down = nn.Linear(hidden, inner), nn.Linear(inner, hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, ids):
        h = self.embed(ids)
        return self.head(self.down(torch.relu(self.up(h))))


@pytest.mark.parametrize("frontend", ["auto", "export"])
def test_tied_embedding_and_head_stay_tied_and_shrink_together(frontend):
    model = TinyLM().eval()
    ids = torch.randint(0, 50, (2, 7))
    result = graphprune.prune_graph(model, (ids,), ratio=0.5, target="none", frontend=frontend)
    pruned = result.model
    vocab_rows = [p for _, p in pruned.named_parameters(remove_duplicate=False) if p.shape[0] == 50]
    assert vocab_rows and all(p is vocab_rows[0] for p in vocab_rows)  # still one tensor under every name
    assert vocab_rows[0].shape == (50, 8)  # the hidden width lost half its channels, in both roles at once
    assert result.report.params_after == sum(p.numel() for p in pruned.parameters()) < result.report.params_before
    assert result.model(ids).shape == model(ids).shape
    assert max_exactness_error(model, (ids,), result) <= 1e-5
