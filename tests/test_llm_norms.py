"""Per-head q/k norms, (1 + weight) RMSNorm and attention soft-capping (issue 22, items 2 and 3).

- Per-head norms (Qwen3, Gemma3: q_norm/k_norm over the head_dim, after the view to (b, L, heads,
  head_dim)): whole heads are pruned, exactly; the head_dim and its norm weight stay intact (BinaryRule
  freezes the weight as kept whole: its channels land on the head_dim, not on the heads; a group only
  constants carry and kept whole is no channel group, like the head_dim itself, so it is not counted).
  Persimmon's q/k LayerNorm (nn.LayerNorm over the head_dim) the same way, by the layer norm's rule.
- Gemma's RMSNorm scales by (1 + weight): the weight is tied to the hidden channels and sliced with them.
- Gemma2's soft-capping c * tanh(x / c), on the attention scores and on the logits: div, tanh and mul by
  their rules (nothing probed, nothing unsupported); heads stay exact through it.
Exactness: graphprune.verify in float64 (pruning == hiding the dropped channels from their consumers),
for heads; the hidden size passes through norms over channels, so it is checked by the sliced indices.
"""
import functools
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune.groups import Role, Slot
from graphprune.options import Ratio, Strategy
from graphprune.verify import max_exactness_error
from conftest import randomize_norms, without_dtype_asserts

HIDDEN, HEADS, HEAD_DIM, SEQ = 32, 4, 8, 5  # SEQ != HEAD_DIM: the key length is never mistaken for the head_dim


class RMSNorm(nn.Module):
    """x / rms(x) * w over the last dim, in float32 and cast back; `offset`: Gemma's (1 + w)."""

    def __init__(self, n, offset=False, eps=1e-6):
        super().__init__()
        self.offset, self.eps = offset, eps
        self.weight = nn.Parameter(torch.randn(n) * 0.1 + (0.0 if offset else 1.0))

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        w = 1.0 + self.weight.float() if self.offset else self.weight
        return (h * w).type_as(x)


class Block(nn.Module):
    """Pre-norm attention with per-head q/k norms (optionally soft-capped scores) and an MLP."""

    def __init__(self, offset=False, softcap=None, layer_norm=False):
        super().__init__()
        self.softcap = softcap
        self.inp = nn.Linear(16, HIDDEN)
        self.norm, self.norm2 = RMSNorm(HIDDEN, offset), RMSNorm(HIDDEN, offset)
        self.q, self.k, self.v = (nn.Linear(HIDDEN, HEADS * HEAD_DIM, bias=False) for _ in range(3))
        head_norm = (lambda: nn.LayerNorm(HEAD_DIM)) if layer_norm else (lambda: RMSNorm(HEAD_DIM, offset))
        self.q_norm, self.k_norm = head_norm(), head_norm()
        self.o = nn.Linear(HEADS * HEAD_DIM, HIDDEN, bias=False)
        self.up, self.down = nn.Linear(HIDDEN, 64), nn.Linear(64, HIDDEN)
        self.out = nn.Linear(HIDDEN, 10)

    def forward(self, x):
        x = self.inp(x)
        b, n, _ = x.shape
        h = self.norm(x)
        q = self.q_norm(self.q(h).view(b, n, -1, HEAD_DIM)).transpose(1, 2)
        k = self.k_norm(self.k(h).view(b, n, -1, HEAD_DIM)).transpose(1, 2)
        v = self.v(h).view(b, n, -1, HEAD_DIM).transpose(1, 2)
        if self.softcap is None:
            a = F.scaled_dot_product_attention(q, k, v)
        else:  # eager attention, as Gemma2 spells it
            s = q @ k.transpose(-1, -2) * HEAD_DIM ** -0.5
            s = torch.tanh(s / self.softcap) * self.softcap
            a = s.softmax(-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, n, -1))
        return self.out(x + self.down(F.gelu(self.up(self.norm2(x)), approximate="tanh")))


def block(**kw):
    torch.manual_seed(0)
    return randomize_norms(Block(**kw)).eval(), (torch.randn(2, SEQ, 16),)


def group_of(graph, param):
    """The group holding the output channels (dim 0) of parameter `param`."""
    return graph.group_of(Slot(param, 0, Role.PRODUCER))



def prune_exactly(analysis, x, group_ids, ratio):
    """Prune only `group_ids` at `ratio`; assert the result equals the dense model with the dropped channels
    hidden (float64), and return it."""
    result = analysis.prune(Ratio(0.0), Strategy("l2", ratios={gid: ratio for gid in group_ids}), target="none")
    assert result.report.params_after < result.report.params_before
    checked = SimpleNamespace(model=without_dtype_asserts(result.model), graph=result.graph, plan=result.plan)
    assert max_exactness_error(without_dtype_asserts(analysis.graph_module), x, checked) <= 1e-5
    return result


def assert_head_norms_kept_whole(graph, pruned, prefix=""):
    """The per-head norm weights are in no group (no tensor of the model's data carries their channels), and
    the pruned model still has them whole."""
    for name in ("q_norm.weight", "k_norm.weight"):
        assert group_of(graph, prefix + name) is None, name
        assert dict(pruned.named_parameters())[prefix + name].shape == (HEAD_DIM,)


# -- a hand-written block -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [False, True], ids=["w", "1+w"])
def test_per_head_norm_prunes_whole_heads_exactly_and_keeps_its_weight(offset):
    model, x = block(offset=offset)
    analysis = graphprune.analyse(model, x, frontend="fx")
    graph = analysis.dependencies
    assert graph.unsupported == () and graph.probed == ()  # casts and (1 + w) by rule
    heads = group_of(graph, "q.weight")
    assert heads.size == HEADS and heads.prunable
    assert group_of(graph, "k.weight") is heads and group_of(graph, "v.weight") is heads
    # golden: 5 groups (input, hidden, heads, MLP, output); frozen: the model's input and output
    assert (len(graph.groups), len(graph.frozen)) == (5, 2)
    result = prune_exactly(analysis, x, [heads.id], 0.5)
    assert result.model.q.out_features == result.model.k.out_features == 2 * HEAD_DIM
    assert_head_norms_kept_whole(graph, result.model)
    rebuilt = result.module  # the caller's class, verified against the pruned graph's outputs
    assert isinstance(rebuilt, Block) and rebuilt.o.in_features == 2 * HEAD_DIM


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_per_head_layer_norm_prunes_whole_heads_exactly_and_keeps_its_weight(frontend):
    """Persimmon's q/k LayerNorm over the head_dim (nn.LayerNorm; aten.native_layer_norm under export): the heads
    pass through it (each head is normalised on its own), so whole heads prune exactly; its weight and bias, over
    the head_dim, are kept whole and counted as no group. (The heads froze: a consumer read the head_dim.)"""
    model, x = block(layer_norm=True)
    analysis = graphprune.analyse(model, x, frontend=frontend)
    graph = analysis.dependencies
    heads = group_of(graph, "q.weight")
    assert heads.size == HEADS and heads.prunable and group_of(graph, "k.weight") is heads
    assert (len(graph.groups), len(graph.frozen)) == (5, 2)  # input, hidden, heads, MLP, output
    result = prune_exactly(analysis, x, [heads.id], 0.5)
    assert result.model.get_parameter("q.weight").shape[0] == 2 * HEAD_DIM
    assert_head_norms_kept_whole(graph, result.model)
    assert all(result.model.get_parameter(f"{n}_norm.bias").shape == (HEAD_DIM,) for n in "qk")
    assert result.report.renormalised == ()  # each head normalised on its own: exact, and reported so


def _kept_rows(result, group, param):
    """Positions of dim 0 of `param` that the plan keeps."""
    return torch.as_tensor(group.kept_positions(Slot(param, 0, Role.PRODUCER), result.plan.keep[group.id]))


@pytest.mark.parametrize("frontend", ["fx", pytest.param("export", marks=pytest.mark.slow)])
def test_one_plus_weight_rmsnorm_is_sliced_with_the_hidden_channels(frontend):
    model, x = block(offset=True)
    analysis = graphprune.analyse(model, x, frontend=frontend)
    hidden = group_of(analysis.dependencies, "inp.weight")
    assert hidden.size == HIDDEN and hidden.prunable
    for norm in ("norm.weight", "norm2.weight"):
        assert group_of(analysis.dependencies, norm) is hidden
    result = analysis.prune(Ratio(0.0), Strategy("l2", ratios={hidden.id: 0.25}), target="none")
    params = dict(result.model.named_parameters())
    kept = _kept_rows(result, hidden, "inp.weight")
    assert len(kept) == HIDDEN - HIDDEN // 4
    for norm in ("norm.weight", "norm2.weight"):  # (1 + w) is taken over the same channels as the stream
        assert torch.equal(_kept_rows(result, hidden, norm), kept)
        assert torch.equal(params[norm], dict(model.named_parameters())[norm][kept])
    assert torch.equal(params["out.weight"], model.out.weight[:, kept])
    with torch.no_grad():
        assert result.model(*x).shape == model(*x).shape
    assert result.module.norm.weight.shape == (len(kept),)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_soft_capped_scores_are_followed_by_rules_and_heads_prune_exactly(frontend):
    model, x = block(offset=True, softcap=30.0)
    analysis = graphprune.analyse(model, x, frontend=frontend)
    graph = analysis.dependencies
    assert graph.unsupported == () and graph.probed == ()  # x / c, tanh, * c: each by its rule
    heads = group_of(graph, "q.weight")
    assert heads.size == HEADS and heads.prunable and group_of(graph, "v.weight") is heads
    assert any(s.name.startswith("tanh") for s in heads.members)  # the capped scores carry the heads
    assert (len(graph.groups), len(graph.frozen)) == (5, 2)
    assert_head_norms_kept_whole(graph, prune_exactly(analysis, x, [heads.id], 0.5).model)


class SharedNormWeight(nn.Module):
    """One parameter of size head_dim read twice: as a per-head norm weight over the head_dim, and as a
    per-channel scale of an 8-wide activation, whose channels it would then be sliced with."""

    def __init__(self):
        super().__init__()
        self.q, self.side = nn.Linear(16, HEADS * HEAD_DIM), nn.Linear(16, HEAD_DIM)
        self.weight = nn.Parameter(torch.rand(HEAD_DIM) + 0.5)
        self.out, self.out_side = nn.Linear(HEADS * HEAD_DIM, 4), nn.Linear(HEAD_DIM, 4)

    def forward(self, x):
        b, n, _ = x.shape
        q = (self.q(x).view(b, n, -1, HEAD_DIM) * self.weight).transpose(1, 2)  # over the head_dim: kept whole
        a = F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(b, n, -1)
        return self.out(a) + self.out_side(self.side(x) * self.weight)


def test_a_kept_whole_weight_also_scaling_channels_freezes_them():
    torch.manual_seed(0)
    model, x = SharedNormWeight().eval(), torch.randn(2, SEQ, 16)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="fx")
    group = group_of(result.graph, "weight")
    assert group is group_of(result.graph, "side.weight") and group.frozen  # the side channels keep the weight whole
    assert any("kept whole" in r for r in group.frozen_reasons)
    assert result.model.side.out_features == HEAD_DIM and result.model.q.out_features < HEADS * HEAD_DIM
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape


# -- Hugging Face families (tiny random configs, use_cache=False) ----------------------------------------------------
def _config(cls, layers, **kw):
    return cls(hidden_size=HIDDEN, num_hidden_layers=layers, num_attention_heads=HEADS, num_key_value_heads=2,
               head_dim=HEAD_DIM, intermediate_size=64, vocab_size=100, pad_token_id=0, use_cache=False, **kw)


FAMILIES = {  # name -> (model class, config class, layers, (groups, frozen) golden)
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", 1, (5, 2)),  # frozen: rotary inv_freq, vocabulary
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", 1, (5, 2)),  # the same, with (1 + w) norms
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", 2, (7, 2)),  # sliding/global layers, soft-capping: inv_freq, vocab
}


def _kind(group) -> str:
    """Why a frozen group of these families is frozen, in a word."""
    if any(s.name.endswith("inv_freq") for s in group.members):
        return "rotary inv_freq"
    return "vocabulary" if any("reaches model output" in r for r in group.frozen_reasons) else group.frozen_reasons[0]


@functools.lru_cache(maxsize=None)
def hf_analysed(name):
    os.environ["HF_HUB_OFFLINE"] = "1"
    transformers = pytest.importorskip("transformers")
    model_cls, config_cls, layers, _ = FAMILIES[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(_config(getattr(transformers, config_cls), layers)).eval()
    x = (torch.randint(0, 100, (1, SEQ)),)
    return model, x, graphprune.analyse(model, x)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "gemma3" else pytest.mark.slow) for n in FAMILIES])
def test_family_prunes_heads_exactly_with_its_norms_and_capping(name):
    model, x, analysis = hf_analysed(name)
    graph = analysis.dependencies
    layers = FAMILIES[name][2]
    assert (len(graph.groups), len(graph.frozen)) == FAMILIES[name][3]
    assert graph.probed == ()  # soft-capping and (1 + w) by rules (the mask's aten.index has none: no channels)
    assert sorted(_kind(g) for g in graph.frozen) == ["rotary inv_freq", "vocabulary"]
    heads = [group_of(graph, f"model.layers.{i}.self_attn.q_proj.weight") for i in range(layers)]
    assert all(g.prunable and g.size == 2 for g in heads)  # KV groups, each with its query heads
    hidden = group_of(graph, "model.layers.0.input_layernorm.weight")
    assert hidden.prunable and hidden.size == HIDDEN  # the (1 + w) norms (Gemma) go with the residual stream
    result = prune_exactly(analysis, x, [g.id for g in heads], 0.5)
    if name != "gemma2":
        for i in range(layers):
            assert_head_norms_kept_whole(graph, result.model, f"model.layers.{i}.self_attn.")
    params = dict(result.model.named_parameters())
    assert params["model.layers.0.self_attn.q_proj.weight"].shape[0] == HEADS // 2 * HEAD_DIM
    assert result.module.config.num_key_value_heads == 1  # the caller's class, rebuilt and verified


@pytest.mark.slow
def test_olmo2_norm_over_every_head_is_sliced_with_the_heads_and_reported_not_exact():
    """Olmo2's q_norm/k_norm span the whole projection (heads x head_dim), not one head: the weight is sliced with
    the heads, and the statistic over the kept heads only is reported (valid, not exact, as LayerNorm's)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = _config(transformers.Olmo2Config, 1, eos_token_id=0, bos_token_id=0)
    model, x = transformers.Olmo2ForCausalLM(config).eval(), (torch.randint(0, 100, (1, SEQ)),)
    analysis = graphprune.analyse(model, x)
    heads = group_of(analysis.dependencies, "model.layers.0.self_attn.q_proj.weight")
    assert heads.prunable and group_of(analysis.dependencies, "model.layers.0.self_attn.q_norm.weight") is heads
    result = analysis.prune(Ratio(0.0), Strategy("l2", ratios={heads.id: 0.5}), target="none")
    q_norm = dict(result.model.named_parameters())["model.layers.0.self_attn.q_norm.weight"]
    assert q_norm.shape == (HEADS // 2 * HEAD_DIM,)
    assert len(result.report.renormalised) == 2  # the q and k statistics
