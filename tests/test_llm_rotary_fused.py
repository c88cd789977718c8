"""Partial rotary embeddings and fused projections (issue 22, items 4 and 6).

Partial rotary: rotary over the first r dims of each head, the rest passed through
(q = cat([rotate(q[..., :r]), q[..., r:]], -1)); heads prune whole (a slice or concatenation along
head_dim marks its parts as inside a head). Fused projections: one linear's output split into q, k, v
(Phi-3 qkv_proj by fixed sizes, GPT-NeoX query_key_value as (heads, 3 x head_dim)) or gate and up
(Phi-3 gate_up_proj, chunked), pruned as the heads and units they hold; `result.module` rebuilds the
caller's class, Phi-3's from a config that states the fused layout's sizes.

Heads and MLP units are exact (graphprune.verify, float64); the hidden size passes through norms.
"""
import functools
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune.eager import EagerRebuildError
from graphprune.options import Ratio, Strategy
from graphprune.planner import PrunePlan
from graphprune.verify import max_exactness_error
from conftest import without_dtype_asserts

os.environ["HF_HUB_OFFLINE"] = "1"
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LENGTH = 32, 4, 2, 8, 8


# -- a hand-written attention with partial rotary ------------------------------------------------------------
def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _rotate_interleaved(x):
    return torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)


class PartialRotaryAttention(nn.Module):
    """Grouped-query attention whose rotary embedding turns the first `rotary` dims of each head (StableLM,
    GPT-NeoX, Phi: rotate_half; GLM-4: interleaved pairs) and passes the others through."""

    def __init__(self, rotary: int = 2, interleaved: bool = False):
        super().__init__()
        self.q = nn.Linear(HIDDEN, HEADS * HEAD_DIM)
        self.k = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM)
        self.v = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM)
        self.o = nn.Linear(HEADS * HEAD_DIM, HIDDEN)
        self.rotary, self.rotate = rotary, _rotate_interleaved if interleaved else _rotate_half
        angles = torch.arange(LENGTH)[:, None] * (1.0 + torch.arange(rotary))[None, :] / rotary
        self.register_buffer("cos", angles.cos())
        self.register_buffer("sin", angles.sin())

    def _rotated(self, x):
        r = self.rotary
        turned = x[..., :r] * self.cos + self.rotate(x[..., :r]) * self.sin
        return torch.cat([turned, x[..., r:]], dim=-1)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, HEADS, HEAD_DIM).transpose(1, 2)
        k = self.k(x).view(b, n, KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = self.v(x).view(b, n, KV_HEADS, HEAD_DIM).transpose(1, 2)
        out = F.scaled_dot_product_attention(self._rotated(q), self._rotated(k), v, is_causal=True, enable_gqa=True)
        return self.o(out.transpose(1, 2).reshape(b, n, HEADS * HEAD_DIM))


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
def test_hand_written_partial_rotary_prunes_whole_kv_groups_exactly(frontend, interleaved):
    """2 KV heads of 8 dims, 2 of them rotated: the rotated part's (2 positions) and the heads' (2 KV heads)
    sizes tie, which once made the key's rotary concatenation pick the dim inside the head and freeze it."""
    torch.manual_seed(0)
    model = PartialRotaryAttention(interleaved=interleaved).eval()
    x = torch.randn(1, LENGTH, HIDDEN)
    analysis = graphprune.analyse(model, x, frontend=frontend)
    (heads,) = analysis.dependencies.prunable
    assert heads.size == KV_HEADS  # KV groups: one KV head with its 2 query heads
    assert not analysis.dependencies.unsupported
    result = analysis.prune(Ratio(0.5), Strategy("l2"), target="none")
    params = dict(result.model.named_parameters())
    assert params["q.weight"].shape == (HEADS // 2 * HEAD_DIM, HIDDEN)  # whole heads: 2 of 4, 8 dims each
    assert params["k.weight"].shape == params["v.weight"].shape == (HEAD_DIM, HIDDEN)
    assert params["o.weight"].shape == (HIDDEN, HEADS // 2 * HEAD_DIM)
    gm = without_dtype_asserts(analysis.graph_module)
    assert max_exactness_error(gm, (x,), SimpleNamespace(model=without_dtype_asserts(result.model),
                                                         graph=result.graph, plan=result.plan)) <= 1e-5


# -- Hugging Face families -----------------------------------------------------------------------------------

def _base(**overrides):
    return dict(vocab_size=100, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1, num_attention_heads=HEADS,
                pad_token_id=0, use_cache=False, **overrides)


FAMILIES = {  # name: (build, groups, frozen) with one layer; frozen: the logits' width, the rotary inv_freq buffer
    "gpt_neox": (lambda T: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**_base())), 4, 1),  # rotary_pct 0.25, fused qkv
    "phi3": (lambda T: T.Phi3ForCausalLM(T.Phi3Config(**_base(num_key_value_heads=KV_HEADS))), 5, 2),  # fused
    "stablelm": (lambda T: T.StableLmForCausalLM(T.StableLmConfig(**_base(num_key_value_heads=KV_HEADS))), 4, 1),
    "glm4": (lambda T: T.Glm4ForCausalLM(T.Glm4Config(**_base(num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM))), 5, 2),
    "phi": (lambda T: T.PhiForCausalLM(T.PhiConfig(**_base())), 5, 2),  # partial_rotary_factor 0.5
}
DEFAULT = ("gpt_neox", "phi3")  # the default-suite budget: the others run with -m slow
ALLOWED = ("reaches model output", "mixes channels with a tensor graphprune cannot follow")


@functools.lru_cache(maxsize=None)
def analysed(name: str, gqa: str | None = None):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = FAMILIES[name][0](transformers).eval()
    x = (torch.randint(0, 100, (1, LENGTH)),)
    return model, x, graphprune.analyse(model, x, gqa=gqa)


def heads_groups(analysis):
    return [g for g in analysis.dependencies.groups
            if any(s.name.startswith("scaled_dot_product_attention") for s in g.members)]


def exactness(analysis, x, result) -> float:
    return max_exactness_error(without_dtype_asserts(analysis.graph_module), x, SimpleNamespace(
        model=without_dtype_asserts(result.model), graph=result.graph, plan=result.plan))


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in DEFAULT else pytest.mark.slow) for n in FAMILIES])
def test_partial_rotary_and_fused_attention_prune_whole_heads_exactly(name):
    """Golden group counts; attention and MLP never frozen; heads (whole, by KV group) and MLP units exact."""
    model, x, analysis = analysed(name)
    graph = analysis.dependencies
    assert (len(graph.groups), len(graph.frozen)) == FAMILIES[name][1:]
    assert all(any(a in r for a in ALLOWED) for g in graph.frozen for r in g.frozen_reasons), \
        [g.frozen_reasons for g in graph.frozen]
    (heads,) = heads_groups(analysis)
    assert heads.prunable and heads.size == getattr(model.config, "num_key_value_heads", HEADS)
    mlp = [g for g in graph.prunable if g.size == 64]
    assert len(mlp) == 1
    for group in (heads, mlp[0]):
        result = analysis.prune(Ratio(0.0), Strategy("l2", ratios={group.id: 0.5}), target="none")
        assert len(result.plan.keep[group.id]) == group.size // 2
        assert result.report.params_after < result.report.params_before
        assert exactness(analysis, x, result) <= 1e-5
    module = analysis.prune(Ratio(0.3), Strategy("l2"), target="none").module  # verified against the graph
    assert type(module) is type(model)


def test_phi3_fused_projections_rebuild_as_phi3_from_a_config_that_states_their_sizes(tmp_path):
    """Phi-3 splits qkv_proj at config.num_attention_heads x head_dim and chunks gate_up_proj in two halves: no
    attribute of a copy fixes that, so the module is Phi3ForCausalLM built from the solved config (heads, KV
    heads, intermediate and hidden sizes, head_dim kept at its old hidden / heads) and loaded with the pruned
    tensors; save_pretrained and from_pretrained round-trip it."""
    model, x, analysis = analysed("phi3")
    result = analysis.prune(Ratio(0.5), Strategy("l2"), target="none")
    module = result.module
    config, attention, mlp = module.config, module.model.layers[0].self_attn, module.model.layers[0].mlp
    kept = {analysis.dependencies.group(g).size: len(k) for g, k in result.plan.keep.items()}
    assert type(module) is type(model) and config is not model.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (HEADS // 2, KV_HEADS // 2) == (
        kept[KV_HEADS] * HEADS // KV_HEADS, kept[KV_HEADS])  # a KV group goes with its query heads
    assert config.head_dim == HEAD_DIM and config.intermediate_size == kept[64] and config.hidden_size == kept[HIDDEN]
    assert attention.qkv_proj.out_features == (config.num_attention_heads + 2 * config.num_key_value_heads) * HEAD_DIM
    assert mlp.gate_up_proj.out_features == 2 * config.intermediate_size == 2 * mlp.down_proj.in_features
    with torch.no_grad():
        torch.testing.assert_close(module(*x).logits, result.model(*x).logits, rtol=1e-5, atol=1e-5)
    module.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(*x).logits, module(*x).logits)
    assert model.config.num_attention_heads == HEADS and getattr(model.config, "head_dim", None) is None


def test_gpt_neox_fused_query_key_value_rebuilds_but_its_config_cannot_state_fewer_heads(tmp_path):
    """GPT-NeoX derives head_size = hidden / heads and sizes query_key_value as 3 x hidden: the module runs with
    whole heads removed from its fused projection, and save_pretrained refuses to write a config that lies."""
    model, x, analysis = analysed("gpt_neox")
    (heads,) = heads_groups(analysis)
    result = analysis.prune(Ratio(0.0), Strategy("l2", ratios={heads.id: 0.5}), target="none")
    module = result.module
    attention = module.gpt_neox.layers[0].attention
    assert attention.query_key_value.out_features == 3 * HEADS // 2 * HEAD_DIM == 3 * attention.dense.in_features
    with torch.no_grad():
        torch.testing.assert_close(module(*x).logits, result.model(*x).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(EagerRebuildError, match="save_pretrained"):
        module.save_pretrained(tmp_path)


@pytest.mark.slow
def test_phi3_query_heads_mode_keeps_the_kv_rows_of_its_fused_attention_and_prunes_query_heads():
    """With gqa='query_heads' every KV head is kept; Phi-3's KV heads are rows of the same fused qkv_proj as its
    query heads, so one group holds both: the KV rows are pinned (a partial freeze naming the repeat of the KV
    heads) and the query heads prune, the same ones in every KV group, exactly."""
    _, x, analysis = analysed("phi3", "query_heads")
    (heads,) = heads_groups(analysis)
    repeats = HEADS // KV_HEADS
    assert heads.prunable and heads.size == repeats + 2 * KV_HEADS and len(heads.pinned) == 2 * KV_HEADS
    assert all("repeats key/value heads" in pin.reason for pin in heads.pins)
    result = analysis.prune(Ratio(0.0), Strategy("l2", ratios={heads.id: 0.5}), target="none")
    assert exactness(analysis, x, result) <= 1e-5
    rows = dict(result.model.named_parameters())["model.layers.0.self_attn.qkv_proj.weight"].shape[0]
    assert rows == (HEADS // 2 + 2 * KV_HEADS) * HEAD_DIM  # half the query heads, every KV head


class ConstantIndex(nn.Module):
    """h[:, idx] with constant indices (the spelling of Falcon's `qkv[..., [-2], :]`): output position j is
    channel idx[j] of h, so pruning h re-writes the indices to the kept channels' new positions."""

    def __init__(self):
        super().__init__()
        self.up, self.picked, self.whole = nn.Linear(8, 16), nn.Linear(5, 4), nn.Linear(16, 4)
        self.register_buffer("idx", torch.tensor([1, 3, -2, 9, 3]))

    def forward(self, x):
        h = torch.relu(self.up(x))
        return self.picked(h[:, self.idx]) + self.whole(h)


def test_constant_index_on_the_channel_dim_selects_channels_exactly():
    torch.manual_seed(0)
    model, x = ConstantIndex().eval(), torch.randn(3, 8)
    analysis = graphprune.analyse(model, x, frontend="export")
    (group,) = analysis.dependencies.prunable
    assert group.size == 16 and not analysis.dependencies.unsupported
    kept = (0, 1, 2, 5, 6, 9, 12, 14)  # drops channel 3, picked twice; keeps 1, 14 (= -2) and 9
    result = analysis.apply(PrunePlan({group.id: kept}, {group.id: group.size}))
    assert dict(result.model.named_parameters())["picked.weight"].shape == (4, 3)
    assert max_exactness_error(without_dtype_asserts(analysis.graph_module), (x,), result) <= 1e-5
