"""Disentangled attention (DeBERTa-v2/v3: Hugging Face's DebertaV2Model with relative_attention) prunes whole heads.

Each head adds to its q k^T scores a content-to-position and a position-to-content term: the relative embeddings
projected by the heads' own rows (pos_key_proj/pos_query_proj, or query_proj/key_proj themselves with
share_att_key), multiplied with the head's keys/queries, and gathered along the positions by an index expanded over
batch x heads. The heads group therefore holds those projections' rows, and the gather is channel-wise because its
index is provably the same for every head (rules/indexing.py). Head marks follow dims, not sizes
(dependencies.attention_inputs), so 2 x position_buckets equal to the hidden size is no collision.

Smallest model that shows it: one layer, hidden 32, 4 heads of 8. Heads and MLP channels are exact in float64
(graphprune.verify: pruning == hiding the channels from their consumers).
"""
import functools
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.groups import Role
from graphprune.options import Ratio, Strategy
from graphprune.verify import max_exactness_error
from conftest import without_dtype_asserts

os.environ["HF_HUB_OFFLINE"] = "1"

HIDDEN, HEADS = 32, 4


def _deberta(buckets: int, share: bool):
    """DeBERTa-v3's attention settings (share_att_key, log buckets, a layer-normed relative embedding)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.DebertaV2Config(
        vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=HEADS, intermediate_size=64,
        max_position_embeddings=64, pad_token_id=0, relative_attention=True, pos_att_type=["p2c", "c2p"],
        position_buckets=buckets, norm_rel_ebd="layer_norm", share_att_key=share, max_relative_positions=-1)
    return transformers.DebertaV2Model(config).eval(), (torch.randint(1, 100, (1, 12)),)


def _groups_with(analysis, *names):
    return [g for g in analysis.dependencies.prunable
            if any(s.role is Role.PRODUCER and s.name.endswith(names) for s in g.members)]


def _producers(group) -> set[str]:
    return {s.name.rpartition("self.")[2] for s in group.members if s.role is Role.PRODUCER}


@pytest.mark.parametrize("buckets, share", [(8, True), (16, True), (8, False)],
                         ids=["v3", "span_as_wide_as_hidden", "own_position_projections"])
def test_disentangled_attention_prunes_whole_heads_exactly(buckets, share):
    """16 buckets: the relative embedding has 2 x 16 = 32 rows, as many as the hidden size (a size collision)."""
    model, x = _deberta(buckets, share)
    analysis = graphprune.analyse(model, x)
    # frozen: the hidden width alone (the model's output; the relative embedding, a constant, where it is no input
    # of query_proj/key_proj); with a second layer that is under half the groups (bench/hf_models.py deberta_v3)
    frozen = analysis.dependencies.frozen
    assert all(g.size == HIDDEN for g in frozen) and {g.frozen_reasons[0].partition("`")[0] for g in frozen} <= {
        "reaches model output through ", "channels come from constant "}, [g.frozen_reasons for g in frozen]
    heads = _groups_with(analysis, "query_proj.weight")
    assert [g.size for g in heads] == [HEADS]  # whole heads: head_dim is no channel
    position = {"pos_key_proj.weight", "pos_query_proj.weight"}  # the heads' own position projections, if any
    assert (position <= _producers(heads[0])) == (not share)
    mlp = _groups_with(analysis, "intermediate.dense.weight")
    result = analysis.prune(Ratio(0.0), Strategy("l2", ratios={g.id: 0.5 for g in heads + mlp}), target="none")
    assert max_exactness_error(without_dtype_asserts(analysis.graph_module), x,
                               SimpleNamespace(model=without_dtype_asserts(result.model), graph=result.graph,
                                               plan=result.plan)) <= 1e-5
    kept = len(result.plan.keep[heads[0].id])
    params = dict(result.model.named_parameters())
    projections = [n for n in params if n.endswith("proj.weight") and ".self." in n]
    assert len(projections) == (3 if share else 5)
    assert all(params[n].shape == (kept * HIDDEN // HEADS, HIDDEN) for n in projections) and kept < HEADS


@functools.lru_cache(maxsize=None)
def _pruned_v3():
    """Shared by the tests below, which read it only."""
    model, x = _deberta(8, True)
    return model, x, graphprune.prune_graph(model, x, ratio=0.3, target="none")


def test_pruned_deberta_v3_rebuilds_its_module():
    model, x, result = _pruned_v3()
    assert result.report.params_after < result.report.params_before
    module = result.module  # the caller's class, verified against the pruned graph
    heads = module.encoder.layer[0].attention.self
    assert type(module) is type(model) and heads.num_attention_heads < HEADS
    assert heads.query_proj.out_features == heads.num_attention_heads * HIDDEN // HEADS
    batch = torch.randint(1, 100, (3, 12))  # another batch size: the index's batch x heads size is symbolic
    with torch.no_grad():
        assert torch.allclose(module(batch).last_hidden_state, result.model(batch)[0], atol=1e-5)


def test_pruned_deberta_v3_exports_to_onnx_with_parity(tmp_path):
    from graphprune.export import export_onnx

    _, x, result = _pruned_v3()
    queries = dict(result.model.named_parameters())["encoder.layer.0.attention.self.query_proj.weight"]
    assert queries.shape[0] < HIDDEN  # heads pruned: the gathers' index sizes were rewritten
    assert export_onnx(result.model, x, tmp_path / "deberta.onnx").max_abs_diff <= 1e-4


class Attention(nn.Module):
    """Plain multi-head attention written with matmuls: 2 heads of 8."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(16, 16) for _ in range(4))

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (f(x).view(b, n, 2, c // 2).transpose(1, 2) for f in (self.q, self.k, self.v))
        weights = (q @ k.transpose(-1, -2) / (c // 2) ** 0.5).softmax(-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, n, c))


def test_a_sequence_as_long_as_the_hidden_size_is_no_head_dim():
    """16 tokens of width 16: k^T's last dim (the tokens) has the size of the split (heads x head_dim)."""
    torch.manual_seed(0)
    analysis = graphprune.analyse(Attention().eval(), (torch.randn(1, 16, 16),), frontend="export")
    assert [g.size for g in analysis.dependencies.prunable] == [2]  # the heads, nothing inside them
    result = analysis.prune(Ratio(0.5), target="none")
    assert max_exactness_error(without_dtype_asserts(analysis.graph_module), analysis.example_inputs, result) <= 1e-5
    assert dict(result.model.named_parameters())["q.weight"].shape == (8, 16)


class Gathered(nn.Module):
    """Channels of a conv gathered along the width by positions given as an input: the same for every channel
    (an expand or a repeat of (1, 1, H, W) positions), different per channel ((1, C, H, W) positions), or along the
    channels."""

    def __init__(self, index: str):
        super().__init__()
        self.index = index
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x, positions):
        y = self.a(x)
        if self.index == "per_channel":
            return self.b(torch.gather(y, 3, positions))
        if self.index == "repeated":  # ViT-MAE: ids_keep.unsqueeze(-1).repeat(1, 1, dim), dim an int under export
            return self.b(torch.gather(y, 3, positions.repeat(y.size(0), 8, 1, 1)))
        dim = 1 if self.index == "channels" else -1
        return self.b(torch.gather(y, dim, positions.expand(y.size(0), 8, 4, 4)))


def _positions(per_channel: bool) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.stack([torch.randperm(4) for _ in range(32 if per_channel else 4)]).view(1, -1, 4, 4)


@pytest.mark.parametrize("shared", ["shared", "repeated"])
@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_gather_by_one_index_for_every_channel_prunes_them_and_any_other_freezes_them(frontend, shared):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    analysis = graphprune.analyse(Gathered(shared).eval(), (x, _positions(False)), frontend=frontend)
    assert [g.size for g in analysis.dependencies.prunable] == [8]
    result = analysis.prune(Ratio(0.5), target="none")
    assert [len(k) for k in result.plan.keep.values()] == [4]
    assert max_exactness_error(without_dtype_asserts(analysis.graph_module), analysis.example_inputs, result) <= 1e-5
    for index, reason in (("per_channel", "neither an expand nor a repeat"), ("channels", "gathers along the channel dim")):
        inputs = (x, _positions(index == "per_channel"))
        frozen = graphprune.analyse(Gathered(index).eval(), inputs, frontend=frontend).dependencies.frozen
        reasons = [r for g in frozen if g.size == 8 for r in g.frozen_reasons]
        assert any(reason in r for r in reasons), reasons
