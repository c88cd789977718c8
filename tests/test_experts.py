"""Expert pruning (graphprune.experts): whole experts leave every MoE layer of Hugging Face's Mixtral, Qwen3-MoE,
GPT-OSS, Qwen2-MoE (its shared expert stays) and OLMoE (tiny random configs, float64 where exactness is checked;
no downloads).

Exactness: residual channel 0 is made 1 at every token (embedding column 0 = 1; no attention, expert or shared
expert writes it) and the routers give chosen experts -1e4 per unit of it, so those experts' logits are about
-5e4: never in a top-k, probability exp(-5e4) = 0. Removing them must then leave every output bit-equal,
whether the router renormalises over the top-k (Mixtral, GPT-OSS, norm_topk_prob) or not (Qwen2/3-MoE's
default). Without crafting, the pruned model must equal a fresh model of its class built from a config with
fewer experts and the kept weights copied by hand.
"""
import copy
import os

import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.errors import InputError
from graphprune.experts import RouterLoad, find_moe_layers, prune_experts

os.environ["HF_HUB_OFFLINE"] = "1"
T = pytest.importorskip("transformers")

HIDDEN, WIDTH, EXPERTS, TOP_K, VOCAB = 32, 24, 4, 2, 100
_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=64, num_experts_per_tok=TOP_K, pad_token_id=0, bos_token_id=0, eos_token_id=0)
FAMILIES = {  # name -> (model class, config class, its sizes)
    "mixtral": (T.MixtralForCausalLM, T.MixtralConfig, dict(intermediate_size=WIDTH, num_local_experts=EXPERTS)),
    "qwen3_moe": (T.Qwen3MoeForCausalLM, T.Qwen3MoeConfig, dict(head_dim=8, moe_intermediate_size=WIDTH,
                                                                num_experts=EXPERTS)),
    "qwen3_moe_norm": (T.Qwen3MoeForCausalLM, T.Qwen3MoeConfig, dict(head_dim=8, moe_intermediate_size=WIDTH,
                                                                     num_experts=EXPERTS, norm_topk_prob=True)),
    "gpt_oss": (T.GptOssForCausalLM, T.GptOssConfig, dict(head_dim=8, intermediate_size=WIDTH,
                                                          num_local_experts=EXPERTS)),
    "olmoe": (T.OlmoeForCausalLM, T.OlmoeConfig, dict(intermediate_size=WIDTH, num_experts=EXPERTS)),
    "qwen2_moe": (T.Qwen2MoeForCausalLM, T.Qwen2MoeConfig, dict(moe_intermediate_size=WIDTH, num_experts=EXPERTS,
                                                                shared_expert_intermediate_size=40)),
}
NAMES = sorted(FAMILIES)
NEVER_ROUTED = ((1,), (3,))  # per layer, the experts the crafted routers never choose


def build(name: str, dtype=torch.float64) -> nn.Module:
    """The family's model; in float64 with the experts' per-expert loop (torch's grouped_mm takes no float64)."""
    torch.manual_seed(0)
    cls, config_cls, sizes = FAMILIES[name]
    loop = dict(experts_implementation="eager") if dtype == torch.float64 else {}
    return cls(config_cls(**_COMMON, **sizes, **loop)).to(dtype).eval()


def batches(count: int, seed: int, shape=(2, 12)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, shape, generator=g) for _ in range(count)]


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def never_route(model: nn.Module, removed=NEVER_ROUTED) -> nn.Module:
    """Residual channel 0 is 1 at every token; the routers push `removed[layer]` to logits of about -5e4. The other
    embedding columns are drawn with std 1, so that channel 0 does not decide the routing alone."""
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed.copy_(torch.randn(embed.shape, generator=torch.Generator().manual_seed(7), dtype=embed.dtype))
        embed[:, 0] = 1.0
        for layer, gone in zip(model.model.layers, removed):
            writers = [layer.self_attn.o_proj] + ([layer.mlp.shared_expert.down_proj]
                                                  if hasattr(layer.mlp, "shared_expert") else [])
            for linear in writers:
                linear.weight[0] = 0
                if linear.bias is not None:
                    linear.bias[0] = 0
            experts = layer.mlp.experts
            hidden_dim = 1 if experts.down_proj.shape[1] == HIDDEN else 2  # (E, H, I) or GPT-OSS's (E, I, H)
            experts.down_proj.select(hidden_dim, 0).zero_()
            if hasattr(experts, "down_proj_bias"):
                experts.down_proj_bias[:, 0] = 0
            router = layer.mlp.router if hasattr(layer.mlp, "router") else layer.mlp.gate
            router.weight[list(gone), 0] = -1e4
    return model


def chosen(model: nn.Module, ids_batches) -> list[torch.Tensor]:
    """Per MoE layer, measured on the batches: how often each expert is in a token's top-k, and the routing
    weight it receives in total (float64), from the router's own output."""
    routers = [model.get_submodule(layer.router) for layer in find_moe_layers(model)]
    counts = [torch.zeros(EXPERTS, dtype=torch.float64) for _ in routers]
    weights = [torch.zeros(EXPERTS, dtype=torch.float64) for _ in routers]

    def hook(k):
        def record(module, args, output):
            _, w, idx = output
            counts[k].index_add_(0, idx.flatten(), torch.ones(idx.numel(), dtype=torch.float64))
            weights[k].index_add_(0, idx.flatten(), w.flatten().double())
        return record

    handles = [r.register_forward_hook(hook(k)) for k, r in enumerate(routers)]
    try:
        for ids in ids_batches:
            logits(model, ids)
    finally:
        for h in handles:
            h.remove()
    return counts, weights


@pytest.mark.parametrize("name", NAMES)
def test_never_routed_experts_go_and_the_outputs_stay_bit_equal(name):
    dense = never_route(build(name))
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    counts, _ = chosen(dense, batches(3, seed=1))
    assert all(c[list(gone)].sum() == 0 for c, gone in zip(counts, NEVER_ROUTED))  # the crafting holds
    result = prune_experts(dense, n=1, calibration=[(ids,) for ids in batches(3, seed=1)])
    assert result.removed == NEVER_ROUTED
    assert all(s[gone[0]] == 0 < min(v for e, v in enumerate(s) if e != gone[0])
               for s, gone in zip(result.scores, NEVER_ROUTED))
    for ids in batches(3, seed=2):  # held-out tokens
        assert torch.equal(logits(result.model, ids), logits(dense, ids))
    for layer in result.model.model.layers:
        mlp = layer.mlp
        router = mlp.router if hasattr(mlp, "router") else mlp.gate
        assert router.weight.shape == (EXPERTS - 1, HIDDEN) and router.num_experts == mlp.experts.num_experts == 3
        assert all(p.shape[0] == EXPERTS - 1 for p in mlp.experts.parameters())
    per_expert = sum(p[0].numel() for p in dense.model.layers[0].mlp.experts.parameters()) + HIDDEN + (
        1 if name == "gpt_oss" else 0)  # one expert's slices and its router row (and bias)
    assert result.params_before - result.params_after == 2 * per_expert
    assert result.model.config.num_experts == EXPERTS - 1
    assert dense.config.num_experts == EXPERTS and all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())


def by_hand(dense: nn.Module, removed) -> nn.Module:
    """A fresh model of the class from a config with fewer experts, the kept experts' weights copied."""
    config = copy.deepcopy(dense.config)
    config.num_experts = EXPERTS - len(removed[0])
    fresh = type(dense)(config).double().eval()
    state = dense.state_dict()
    for k, layer in enumerate(find_moe_layers(dense)):
        keep = [e for e in range(EXPERTS) if e not in removed[k]]
        for prefix in (layer.router, layer.experts):
            for key in [key for key in state if key.rsplit(".", 1)[0] == prefix]:
                state[key] = state[key][keep]
    fresh.load_state_dict(state, strict=True)
    return fresh


@pytest.mark.parametrize("name", NAMES)
def test_pruned_model_equals_a_fresh_model_with_fewer_experts(name):
    dense = build(name)
    result = prune_experts(dense, n=2, calibration=[(ids,) for ids in batches(2, seed=1)])
    reference = by_hand(dense, result.removed)
    assert type(result.model) is type(reference) and result.model.config.to_dict() == reference.config.to_dict()
    for ids in batches(2, seed=2):
        assert torch.equal(logits(result.model, ids), logits(reference, ids))


@pytest.mark.parametrize("name", ["mixtral", "gpt_oss"])
def test_the_expert_with_the_least_routing_weight_goes(name):
    """Measured on the calibration batches by an independent hook: the score is each expert's mean routing weight
    per token, and the removed expert is the one with the least; per_layer=False removes one expert everywhere."""
    dense = build(name)
    ids_batches = batches(4, seed=3)
    counts, weights = chosen(dense, ids_batches)
    tokens = sum(ids.numel() for ids in ids_batches)
    assert len({int(w.argmin()) for w in weights}) == 2  # the layers' least-weighted experts differ
    result = prune_experts(dense, n=1, calibration=[(ids,) for ids in ids_batches], score=RouterLoad())
    for k in range(2):
        assert torch.allclose(torch.tensor(result.scores[k], dtype=torch.float64), weights[k] / tokens, rtol=1e-12)
        assert result.removed[k] == (int(weights[k].argmin()),)
    assert result.summary().startswith("expert pruning of 2 MoE layers: 4 -> 3 experts each")
    assert result.summary().count(" removed") == 2
    shared = prune_experts(dense, n=1, calibration=[(ids,) for ids in ids_batches], per_layer=False)
    mean = (weights[0] + weights[1]) / 2
    assert shared.removed == ((int(mean.argmin()),),) * 2


@pytest.mark.parametrize("name", ["mixtral", "gpt_oss", "qwen3_moe", "qwen3_moe_norm"])
def test_kept_routing_weights_follow_the_stated_relation(name):
    """Router by router, on tokens whose dense top-k holds no removed expert: the pruned router picks the same
    experts (renumbered) with the same weights where it renormalises over the top-k, and with the weights scaled
    by 1 / (sum of the kept experts' softmax probabilities) where it does not (Qwen3-MoE's default)."""
    dense = build(name)
    result = prune_experts(dense, n=1, calibration=[(ids,) for ids in batches(2, seed=1)])
    x = torch.randn(200, HIDDEN, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    renormalises = name != "qwen3_moe"
    for layer, gone in zip(find_moe_layers(dense), result.removed):
        keep = torch.tensor([e for e in range(EXPERTS) if e not in gone])
        with torch.no_grad():
            logits_, weights, chosen_ = dense.get_submodule(layer.router)(x)
            _, kept_weights, kept_chosen = result.model.get_submodule(layer.router)(x)
        clean = ~torch.isin(chosen_, torch.tensor(gone)).any(-1)
        assert 50 < clean.sum() < len(x)  # both kinds of token occur
        assert torch.equal(keep[kept_chosen[clean]], chosen_[clean])
        p = logits_.float().softmax(-1).double()
        scale = 1.0 if renormalises else 1 / p[:, keep].sum(-1, keepdim=True)
        torch.testing.assert_close(kept_weights[clean].double(), (weights * scale)[clean].double(),
                                   rtol=2e-6, atol=0)  # the routers' softmax runs in float32


def test_padding_is_left_out_of_the_router_load():
    dense = build("mixtral")
    ids = batches(1, seed=4, shape=(2, 8))[0]
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    padded = prune_experts(dense, n=1, calibration=[{"input_ids": ids, "attention_mask": mask}])
    counts, weights = chosen(dense, [ids])  # all 16 rows, padding included
    assert not torch.allclose(torch.tensor(padded.scores[0], dtype=torch.float64), weights[0] / ids.numel())
    unpadded = prune_experts(dense, n=1, calibration=[(ids[:1],), (ids[1:, :3],)])  # the 11 real tokens alone
    for got, want in zip(padded.scores, unpadded.scores):
        assert got == pytest.approx(want, rel=1e-12)


def pruned(name: str):
    dense = build(name, torch.float32)  # transformers' default experts (grouped_mm), as users run them
    return prune_experts(dense, n=1, calibration=[(ids,) for ids in batches(2, seed=1)])


@pytest.mark.parametrize("name", NAMES)
def test_pruned_model_generates_and_saves(name, tmp_path):
    """generate() with the KV cache gives the tokens it gives without; save_pretrained + from_pretrained rebuild
    the class with fewer experts and the same outputs."""
    model = pruned(name).model
    prompt = batches(1, seed=5, shape=(1, 5))[0]
    cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    assert cached.shape == (1, 11) and torch.equal(cached[:, :5], prompt)
    assert torch.equal(cached, model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False))
    with torch.no_grad():  # the load-balancing loss reads the model's own expert count
        assert torch.isfinite(model(prompt, labels=prompt, output_router_logits=True).aux_loss)
    model.save_pretrained(tmp_path / "pruned")
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    ids = batches(1, seed=6)[0]
    assert loaded.config.num_experts == EXPERTS - 1 and torch.equal(logits(loaded, ids), logits(model, ids))


@pytest.mark.slow  # tracing and the ONNX exporter: about 10 s each
@pytest.mark.parametrize("name", NAMES)
def test_pruned_model_prunes_widths_and_exports_to_onnx(name, tmp_path):
    from graphprune.export import export_onnx
    result = pruned(name)
    model, ids = result.model, batches(1, seed=6)[0]
    model.config.use_cache = False
    widths = graphprune.prune_graph(model, (ids,), ratio=0.3, target="none")
    assert widths.report.params_after < widths.report.params_before == result.params_after
    assert export_onnx(widths.model, (ids,), tmp_path / "widths.onnx").max_abs_diff <= 1e-4


@pytest.mark.slow
def test_expert_pruned_mixtral_exports_to_onnx_as_it_is(tmp_path):
    """The expert-pruned model's graph (no width pruning) gives the model's logits, and ONNX Runtime gives the
    graph's."""
    from graphprune.export import export_onnx
    model, ids = pruned("mixtral").model, batches(1, seed=6)[0]
    model.config.use_cache = False
    graph = graphprune.analyse(model, (ids,)).graph_module
    with torch.no_grad():
        torch.testing.assert_close(graph(ids)[0], logits(model, ids))
    assert export_onnx(graph, (ids,), tmp_path / "experts.onnx").max_abs_diff <= 1e-4


def test_requests_that_cannot_be_met_are_refused():
    dense = build("mixtral")
    calibration = [(ids,) for ids in batches(1, seed=1)]
    for n in (3, 0, -1, 1.0, True, None):
        with pytest.raises(InputError, match=r"experts to remove from every MoE layer: give an integer in \[1, 2\].*"
                                             r"model.layers.0.mlp has 4 experts and sends each token to top_k=2"):
            prune_experts(dense, n=n, calibration=calibration)
    with pytest.raises(InputError, match="scores experts on data: pass calibration"):
        prune_experts(dense, n=1, calibration=[])
    with pytest.raises(InputError, match="score must be RouterLoad"):
        prune_experts(dense, n=1, calibration=calibration, score="router")
    llama = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4))
    with pytest.raises(InputError, match="LlamaForCausalLM has no mixture-of-experts layer graphprune recognises: "
                                         "expert pruning looks for a module with an experts child holding fused 3-D"):
        prune_experts(llama, n=1, calibration=calibration)
    assert dense.config.num_local_experts == EXPERTS and dense.model.layers[0].mlp.gate.weight.shape[0] == EXPERTS


class FusedExperts(nn.Module):
    """Experts as fused parameters (E, in, out), filled in by HandWrittenMoE."""


class HandWrittenMoE(nn.Module):
    """Fused experts and a router: a layout close to Hugging Face's, with variations the pass must refuse."""

    def __init__(self, extra=None, router=None):
        super().__init__()
        self.router = router or nn.Linear(8, EXPERTS, bias=False)
        self.experts = FusedExperts()
        self.experts.up = nn.Parameter(torch.randn(EXPERTS, 8, 16))
        self.experts.down = nn.Parameter(torch.randn(EXPERTS, 16, 8))
        if extra is not None:
            self.experts.extra = nn.Parameter(extra)
        self.top_k = TOP_K

    def forward(self, x):
        weights, chosen_ = torch.topk(self.router(x).softmax(-1), self.top_k, dim=-1)
        out = torch.einsum("te,eio->teo", x, self.experts.up).relu()
        out = torch.einsum("teo,eoi->tei", out, self.experts.down)
        return (out.gather(1, chosen_[..., None].expand(-1, -1, 8)) * weights[..., None]).sum(1)


def test_unknown_layouts_and_router_outputs_are_refused():
    x = [(torch.randn(5, 8),)]
    with pytest.raises(InputError, match=r"experts \(routed by router\): the experts' parameter 'extra' has shape "
                                         r"\(8,\), not \(experts, ...\)"):
        prune_experts(HandWrittenMoE(extra=torch.randn(8)), n=1, calibration=x)
    with pytest.raises(InputError, match=r"the router holds 'scale' of shape \(4,\), besides weight"):
        router = nn.Linear(8, EXPERTS, bias=False)
        router.register_buffer("scale", torch.ones(EXPERTS))
        prune_experts(HandWrittenMoE(router=router), n=1, calibration=x)
    with pytest.raises(InputError, match=r"RouterLoad reads what a router returns, \(logits \(tokens, 4\), top-2 "
                                         r"weights, top-2 indices\); router returned Tensor"):
        prune_experts(HandWrittenMoE(), n=1, calibration=x)
    nested = HandWrittenMoE()
    nested.experts.norm = nn.LayerNorm(8)
    with pytest.raises(InputError, match="the experts module holds tensors in submodules"):
        prune_experts(nested, n=1, calibration=x)
    twice = HandWrittenMoE()
    twice.other = nn.Linear(8, EXPERTS)  # (E, hidden) too: which one routes is not for graphprune to guess
    with pytest.raises(InputError, match=r"experts: fused experts next to 2 modules that could be their router "
                                         r"\(router, other\)"):
        prune_experts(twice, n=1, calibration=x)
    assert [(m.router, m.experts, m.count, m.top_k) for m in find_moe_layers(HandWrittenMoE())] == [
        ("router", "experts", EXPERTS, TOP_K)]
