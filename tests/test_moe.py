"""Mixture of experts: expert MLP widths and the hidden size prune through the router and the token dispatch.

Hugging Face's Mixtral, Qwen3-MoE and GPT-OSS (tiny random configs, no downloads) keep their experts as fused
(experts, in, out) weights multiplied by a grouped matrix product over tokens sorted by expert; one channel of an
expert's intermediate width is one position of those weights in every expert of the layer. A hand-written top-k
MoE with one nn.Linear pair per expert gives every expert its own group. Expert widths are exact in float64
(graphprune.verify: pruning == hiding the dropped channels from the down projections); the hidden size passes
through RMSNorm, so it is checked by shapes, parameter counts and ONNX Runtime parity. The router's expert dim
stays whole (topk over it: which experts win would change).
"""
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
T = pytest.importorskip("transformers")

HIDDEN, LAYERS, EXPERTS, TOP_K = 32, 1, 4, 2
_COMMON = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=100, max_position_embeddings=64, use_cache=False)
FAMILIES = {  # name -> (build, the expert intermediate width)
    "mixtral": (lambda: T.MixtralForCausalLM(T.MixtralConfig(
        **_COMMON, intermediate_size=24, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K)), 24),
    "qwen3_moe": (lambda: T.Qwen3MoeForCausalLM(T.Qwen3MoeConfig(
        **_COMMON, head_dim=8, intermediate_size=64, moe_intermediate_size=24, num_experts=EXPERTS,
        num_experts_per_tok=TOP_K)), 24),
    "gpt_oss": (lambda: T.GptOssForCausalLM(T.GptOssConfig(
        **_COMMON, head_dim=8, intermediate_size=24, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K)), 24),
    "mixtral_batched": (lambda: T.MixtralForCausalLM(T.MixtralConfig(
        **_COMMON, intermediate_size=24, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K,
        experts_implementation="batched_mm")), 24),
    "gpt_oss_batched": (lambda: T.GptOssForCausalLM(T.GptOssConfig(
        **_COMMON, head_dim=8, intermediate_size=24, num_local_experts=EXPERTS, num_experts_per_tok=TOP_K,
        experts_implementation="batched_mm")), 24),
}  # *_batched: transformers' batched_mm experts (each token's expert weights gathered, then bmm)
# frozen groups at one layer: the rotary frequencies (a buffer broadcast over positions), the router's expert dim
# (topk over it) and the logits (the model's output)
FROZEN = 3


def _ids():
    return (torch.randint(0, 100, (1, 8)),)


_ANALYSED, _PRUNED = {}, {}
DEFAULT = ("mixtral", "gpt_oss")  # the default-suite budget (concatenated and interleaved experts); -m slow: all
PARAMS = [pytest.param(n, marks=() if n in DEFAULT else pytest.mark.slow) for n in sorted(FAMILIES)]


def analysed(name):
    if name not in _ANALYSED:
        torch.manual_seed(0)
        model = FAMILIES[name][0]().eval()
        x = _ids()
        _ANALYSED[name] = model, x, graphprune.analyse(model, x)
    return _ANALYSED[name]


def expert_groups(analysis):
    """The groups that write a fused expert weight's intermediate channels."""
    return [g for g in analysis.dependencies.groups
            if any(s.role is Role.PRODUCER and ".experts.gate_up_proj" in s.name for s in g.members)]


def hidden_group(analysis):
    return next(g for g in analysis.dependencies.groups if any(s.name == "model.embed_tokens.weight" for s in g.members))



def exactness(analysis, x, result):
    return max_exactness_error(without_dtype_asserts(analysis.graph_module), x,
                               SimpleNamespace(model=without_dtype_asserts(result.model), graph=result.graph,
                                               plan=result.plan))


@pytest.mark.parametrize("name", PARAMS)
def test_expert_widths_prune_exactly(name):
    """Every MoE layer's expert width is one prunable group; pruning it is exact and removes the measured params."""
    model, x, analysis = analysed(name)
    width = FAMILIES[name][1]
    groups = expert_groups(analysis)
    assert len(groups) == LAYERS and all(g.prunable and g.size == width for g in groups)
    result = analysis.prune(Ratio(0.0), Strategy("l2", ratios={g.id: 0.5 for g in groups}), target="none")
    assert exactness(analysis, x, result) <= 1e-5
    params = dict(result.model.named_parameters())
    fused = next(p for n, p in params.items() if n.endswith("experts.gate_up_proj"))
    assert 2 * width // 2 in fused.shape and fused.shape[0] == EXPERTS  # every expert keeps half its width
    down = next(p for n, p in params.items() if n.endswith("experts.down_proj"))
    assert sorted(down.shape[1:]) == sorted((HIDDEN, width // 2))
    removed = sum(p.numel() for p in analysis.graph_module.parameters()) - sum(p.numel() for p in params.values())
    per_channel = 3 * HIDDEN * EXPERTS + (2 * EXPERTS if name.startswith("gpt_oss") else 0)  # gate, up, down (+ gate, up biases)
    assert removed == result.report.params_before - result.report.params_after == LAYERS * (width // 2) * per_channel


@pytest.mark.parametrize("name", PARAMS)
def test_frozen_groups_and_hidden_size(name):
    """Only the router's expert dim (and groups unrelated to MoE) stays frozen; the hidden size is prunable."""
    _, _, analysis = analysed(name)
    frozen = analysis.dependencies.frozen
    assert len(frozen) == FROZEN, [g.frozen_reasons for g in frozen]
    routers = [g for g in frozen if "ranks along the channel dim" in g.frozen_reasons[0]]
    assert len(routers) == LAYERS and all(g.size == EXPERTS for g in routers)
    assert all(any(".mlp." in s.name and s.role is Role.PRODUCER for s in g.members) for g in routers)
    assert not any("has no rule" in r for g in frozen for r in g.frozen_reasons)
    assert hidden_group(analysis).prunable


def test_whole_mixtral_prunes_and_exports_to_onnx(tmp_path):
    """Heads, hidden size and expert widths at 0.3: smaller, same output shapes, ONNX Runtime parity. Even with no
    target the widths the grouped products read stay in steps of 4 floats (the rule's kernel step: torch's
    grouped_mm, which the eager class calls, needs 16-byte strides), so the caller's class rebuilds (next test)."""
    from graphprune.export import export_onnx
    model, x, analysis = analysed("mixtral")
    assert set(analysis.kernel_steps.values()) == {4}
    assert {n.rsplit(".", 1)[-1] for n in analysis.kernel_steps} == {"gate_up_proj", "down_proj"}
    result = analysis.prune(Ratio(0.3), Strategy("l2"), target="none")
    assert hidden_group(analysis).id in result.plan.keep and expert_groups(analysis)[0].id in result.plan.keep
    fused = [p for n, p in result.model.named_parameters() if n.endswith(("gate_up_proj", "down_proj"))]
    assert fused and all(d % 4 == 0 for p in fused for d in p.shape[1:])
    assert any(d % 4 for g in (hidden_group(analysis), expert_groups(analysis)[0])  # not by chance: asked widths
               for d in [g.size - round(0.3 * g.size)])  # were off the step
    assert result.report.params_after < 0.75 * result.report.params_before
    with torch.no_grad():
        assert result.model(*x)[0].shape == model(*x).logits.shape
    assert export_onnx(result.model, x, tmp_path / "mixtral.onnx").max_abs_diff <= 1e-4
    _PRUNED["mixtral"] = result



@pytest.mark.slow
def test_pruned_mixtral_rebuilds_its_class(tmp_path):
    if "mixtral" not in _PRUNED:
        test_whole_mixtral_prunes_and_exports_to_onnx(tmp_path)
    result = _PRUNED["mixtral"]
    experts = result.module.model.layers[0].mlp.experts  # verified against result.model by the rebuild
    fused = dict(result.model.named_parameters())["model.layers.0.mlp.experts.gate_up_proj"]
    assert experts.gate_up_proj.shape == fused.shape
    assert experts.gate_up_proj.shape[1] < 2 * FAMILIES["mixtral"][1] and experts.gate_up_proj.shape[2] < HIDDEN


def test_grouped_mm_in_plain_ops_matches_transformers_fallback():
    """The ONNX form of the grouped product equals transformers' op, with an empty expert and rows past the end."""
    from graphprune.rules.moe import grouped_mm_as_matmul
    torch.manual_seed(0)
    x, w = torch.randn(7, 5, dtype=torch.float64), torch.randn(4, 5, 3, dtype=torch.float64)
    offs = torch.tensor([2, 2, 5, 6], dtype=torch.int32)  # expert 1 gets no rows; row 6 belongs to none
    want = torch.ops.transformers.grouped_mm_fallback(x, w, offs)
    assert torch.equal(grouped_mm_as_matmul(x, w, offs), want) and not want[6].any()


class TopKMoE(nn.Module):
    """A top-k mixture of experts written by hand: one GELU MLP per expert; `sparse` dispatches the chosen tokens
    with index and index_add, otherwise every expert runs on every token and is weighted by its gate."""

    def __init__(self, sparse: bool, d_in=8, hidden=16, ffn=32, experts=EXPERTS, top_k=TOP_K):
        super().__init__()
        self.embed = nn.Linear(d_in, hidden)
        self.router = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
                                     for _ in range(experts))
        self.head = nn.Linear(hidden, 3)
        self.top_k, self.sparse = top_k, sparse

    def forward(self, x):
        h = self.embed(x)
        flat = h.reshape(-1, h.shape[-1])
        weights, chosen = torch.topk(self.router(flat).softmax(-1), self.top_k, dim=-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            if self.sparse:
                token, slot = torch.where(chosen == e)
                out = out.index_add(0, token, expert(flat[token]) * weights[token, slot, None])
            else:
                out = out + (weights * (chosen == e)).sum(-1, keepdim=True) * expert(flat)
        return self.head(h + out.reshape(h.shape))


def _expert_of(group):
    return {s.name.split(".")[1] for s in group.members if s.name.startswith("experts.")}


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_hand_written_moe_gives_each_expert_its_own_group(sparse, frontend):
    torch.manual_seed(0)
    model, x = TopKMoE(sparse).eval(), (torch.randn(2, 5, 8),)
    analysis = graphprune.analyse(model, x, frontend=frontend)
    experts = [g for g in analysis.dependencies.prunable if g.size == 32]
    assert sorted(min(_expert_of(g)) for g in experts) == [str(e) for e in range(EXPERTS)]
    assert all(len(_expert_of(g)) == 1 for g in experts)  # independent groups
    frozen = analysis.dependencies.frozen
    assert sorted(g.size for g in frozen) == [3, EXPERTS, 8]  # logits, router over experts, model input
    hidden = next(g for g in analysis.dependencies.prunable if any(s.name == "embed.weight" for s in g.members))
    ratios = {g.id: 0.2 * (k + 1) for k, g in enumerate(experts)}  # a different width per expert
    result = analysis.prune(Ratio(0.0), Strategy("l2", ratios={**ratios, hidden.id: 0.25}), target="none")
    assert exactness(analysis, x, result) <= 1e-5  # no norm here: the hidden size is exact too
    params = dict(result.model.named_parameters())
    widths = sorted(p.shape[0] for n, p in params.items() if n.endswith("0.weight") and "experts" in n)
    assert widths == [6, 12, 19, 25]  # 32 less ceil(20/40/60/80%)
    assert params["embed.weight"].shape == (12, 8) and params["router.weight"].shape == (EXPERTS, 12)


def test_hand_written_moe_uniform_layers_keeps_one_width_for_all_experts():
    torch.manual_seed(0)
    model, x = TopKMoE(False).eval(), (torch.randn(2, 5, 8),)
    model.experts[0][0].weight.data.mul_(10)  # expert 0 matters more: global ranking alone would spare it
    analysis = graphprune.analyse(model, x, frontend="fx")

    def widths(uniform):
        result = analysis.prune(Ratio(0.3), Strategy("l2", scope="global", uniform_layers=uniform), target="none")
        return [p.shape[0] for n, p in result.model.named_parameters() if n.endswith("0.weight") and "experts" in n]

    assert len(set(widths(False))) > 1
    assert len(set(widths(True))) == 1 and widths(True)[0] < 32


class ChannelIndexing(nn.Module):
    """Ops that pick channels by data or by stride over part of the channel dim: both must freeze them."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(8, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        order = torch.argsort(x[0, :8])  # positions known only from the data
        picked = self.a(x)[:, order]  # a data-dependent selection of a's channels
        strided = self.b(x)[:, 0:12:2]  # every other channel of part of b's
        return self.head(torch.cat([picked, strided, picked[:, :2] + strided[:, :2]], dim=-1))


def test_data_dependent_channel_selection_and_partial_strides_freeze():
    torch.manual_seed(0)
    analysis = graphprune.analyse(ChannelIndexing().eval(), (torch.randn(3, 8),), frontend="export")
    reasons = {r for g in analysis.dependencies.groups if g.size == 16 for r in g.frozen_reasons}
    assert any("indexes the channel dim" in r for r in reasons), reasons
    assert any("every n-th channel of part of the channel dim" in r for r in reasons), reasons


class WriteIntoZeros(nn.Module):
    """Rows written into a tensor created with a fixed width: the writer's channels cannot shrink alone."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(8, 16), nn.Linear(16, 2)

    def forward(self, x):
        rows = torch.argsort(x[:, 0])
        out = torch.zeros(x.shape[0], 16).index_put((rows,), self.a(x), accumulate=True)
        return self.head(out)


def test_rows_written_into_a_created_tensor_freeze_the_writer():
    torch.manual_seed(0)
    model, x = WriteIntoZeros().eval(), (torch.randn(3, 8),)
    analysis = graphprune.analyse(model, x, frontend="export")
    group = next(g for g in analysis.dependencies.groups if any(s.name == "a.weight" for s in g.members))
    assert any("writes into a tensor whose channels graphprune cannot follow" in r for r in group.frozen_reasons)
    result = analysis.prune(Ratio(0.5), Strategy("l2"), target="none")  # still runs, same output
    with torch.no_grad():
        out = result.model(*x)
        torch.testing.assert_close(out[0] if isinstance(out, (tuple, list)) else out, model(*x))
