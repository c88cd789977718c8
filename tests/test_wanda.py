"""Wanda (|W| * ||X||, summed per channel) against hand computations, and the global normalisation that makes
attention heads and MLP units comparable."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.errors import InputError
from graphprune.importance import ScoringContext, Wanda, resolve
from graphprune.planner import plan_global

os.environ["HF_HUB_OFFLINE"] = "1"


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _ctx(analysis, calibration):
    return ScoringContext(analysis.graph_module, analysis.dependencies, calibration, None,
                          analysis.cost.channel_macs, analysis.layer_inputs)


def test_wanda_on_an_mlp_matches_the_formula():
    torch.manual_seed(0)
    model = MLP().eval()
    g = torch.Generator().manual_seed(1)
    calibration = [(torch.randn(4, 5, generator=g),) for _ in range(3)]
    analysis = graphprune.analyse(model, calibration[0][0], frontend="fx")
    group = next(grp for grp in analysis.dependencies.prunable if grp.size == 6)
    scores = Wanda()([group], _ctx(analysis, calibration))[group.id]

    x = torch.cat([b[0] for b in calibration]).double()
    with torch.no_grad():
        hidden = torch.relu(model.fc1(x.float())).double()
    w1, w2 = model.fc1.weight.detach().double(), model.fc2.weight.detach().double()
    # producer row c: sum_j |W1[c, j]| ||x_j||; consumer column c: ||h_c|| sum_i |W2[i, c]|
    expected = (w1.abs() * x.norm(dim=0)).sum(1) + hidden.norm(dim=0) * w2.abs().sum(0)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-6)


def test_wanda_is_a_builtin_name_and_needs_calibration():
    assert isinstance(resolve("wanda"), Wanda)
    with pytest.raises(InputError, match="calibration"):
        graphprune.prune_graph(MLP(), torch.randn(2, 5), ratio=0.5, importance="wanda")


transformers = pytest.importorskip("transformers")
HEADS, HEAD_DIM, HIDDEN = 4, 8, 32
WEAK = 1  # layer 0's weak head


def _bert():
    torch.manual_seed(0)
    return transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=64,
        max_position_embeddings=64), add_pooling_layer=False).eval()


@pytest.fixture(scope="module")
def bert_setup():
    model = _bert()
    attn = model.encoder.layer[0].attention
    with torch.no_grad():  # a weak head: head 1 of layer 0 at 1% of its weights
        for lin in (attn.self.query, attn.self.key, attn.self.value):
            lin.weight[WEAK * HEAD_DIM:(WEAK + 1) * HEAD_DIM] *= 0.01
        attn.output.dense.weight[:, WEAK * HEAD_DIM:(WEAK + 1) * HEAD_DIM] *= 0.01
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 100, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    calibration = [(torch.randint(0, 100, (2, 12), generator=g), mask) for _ in range(2)]
    analysis = graphprune.analyse(model, (ids,), example_kwargs={"attention_mask": mask}, frontend="export")
    return model, analysis, calibration


def test_wanda_head_score_matches_hooks_on_the_hugging_face_model(bert_setup):
    """A head's score: its q/k/v rows weighted by the layer input's norms, plus its columns of the
    attention output projection weighted by the norms of the attention output features."""
    model, analysis, calibration = bert_setup
    attn = model.encoder.layer[1].attention
    group = next(g for g in analysis.dependencies.prunable
                 if g.size == HEADS and any(s.name == "encoder.layer.1.attention.self.query.weight" for s in g.members))
    scores = Wanda()([group], _ctx(analysis, calibration))[group.id]

    seen = {"in": [], "context": []}
    hooks = [attn.self.query.register_forward_hook(lambda m, a, o: seen["in"].append(a[0])),
             attn.output.dense.register_forward_hook(lambda m, a, o: seen["context"].append(a[0]))]
    with torch.no_grad():
        for ids, mask in calibration:
            model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    x_norm = torch.cat([t.reshape(-1, HIDDEN) for t in seen["in"]]).double().norm(dim=0)
    c_norm = torch.cat([t.reshape(-1, HIDDEN) for t in seen["context"]]).double().norm(dim=0)
    rows = sum((lin.weight.detach().double().abs() * x_norm).sum(1) for lin in (attn.self.query, attn.self.key,
                                                                                  attn.self.value))
    cols = c_norm * attn.output.dense.weight.detach().double().abs().sum(0)
    expected = (rows + cols).reshape(HEADS, HEAD_DIM).sum(1)
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-5)


def test_global_ranking_compares_heads_and_mlp_units_by_their_share_of_their_group(bert_setup):
    """plan_global divides each group's scores by their mean: a head (the sum of 8 rows and columns per
    projection) and an MLP unit (one row, one column) are compared relative to their peers, so scaling any
    group's scores changes nothing, and a weak head goes before MLP units however large raw head scores are."""
    _, analysis, calibration = bert_setup
    graph = analysis.dependencies
    scores = Wanda()(list(graph.prunable), _ctx(analysis, calibration))
    heads = [g.id for g in graph.prunable if g.size == HEADS]
    mlps = [g.id for g in graph.prunable if g.size == 64]
    assert heads and mlps
    plan = plan_global(graph, scores, 0.3, min_keep=0.25).plan
    scaled = dict(scores, **{gid: scores[gid] * 1000.0 for gid in heads})
    assert plan_global(graph, scaled, 0.3, min_keep=0.25).plan == plan
    raw_ratio = np.mean([scores[h].mean() for h in heads]) / np.mean([scores[m].mean() for m in mlps])
    assert raw_ratio > 4  # raw head scores are on another scale than MLP units' ...
    weak_group = next(h for h in heads if any(s.name.startswith("encoder.layer.0.") for s in graph.group(h).members))
    total = sum(g.size for g in graph.prunable)
    few = plan_global(graph, scores, 3 / total, min_keep=0.25).plan  # the 3 lowest channels of the model
    assert WEAK not in few.keep[weak_group]  # ... yet the weak head is among them
    assert sum(len(few.keep.get(m, range(64))) < 64 for m in mlps) >= 1  # beside MLP units


def test_wanda_prunes_bert_to_a_mac_budget_and_the_model_runs(bert_setup):
    model, analysis, calibration = bert_setup
    budget = int(0.75 * analysis.stats.macs)
    result = analysis.prune(graphprune.MaxMacs(budget), graphprune.Strategy("wanda", scope="global"), "none",
                            graphprune.Calibration(calibration))
    assert result.report.macs_after <= budget
    assert result.report.params_after == sum(p.numel() for p in result.model.parameters())
    ids, mask = calibration[0]
    with torch.no_grad():
        out = result.model(ids, mask).last_hidden_state
    assert out.shape == model(input_ids=ids, attention_mask=mask).last_hidden_state.shape
