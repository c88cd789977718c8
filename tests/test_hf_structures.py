"""Transformer structures found by the analysis in Hugging Face models (tiny random configs, no downloads).

Structures: attention heads (whole heads; grouped-query attention by KV group or by query heads
inside every group), MLP channels (SwiGLU gate/up coupled), and the hidden size (the residual
stream through embeddings, LayerNorm/RMSNorm weights, every projection, a tied LM head).
Heads and MLP channels are exact (graphprune.verify: pruning == hiding the channels from their
consumers); the hidden size passes through norms over channels, so it is checked by shapes, by
running and by ONNX Runtime parity. One representative per model runs by default; the full
matrix (every model x structure x ratio, with ONNX) is marked slow.
"""
import enum
import functools
import os
from types import SimpleNamespace

import pytest
import torch

import graphprune
from graphprune.groups import Role
from graphprune.options import Ratio, Strategy
from graphprune.verify import max_exactness_error
from conftest import without_dtype_asserts

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")
T = transformers

HIDDEN, LAYERS, HEADS, FFN = 32, 2, 4, 64


def _ids():
    return (torch.randint(0, 100, (1, 8)),)


MODELS = {
    "bert": (lambda: T.BertModel(T.BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                              num_attention_heads=HEADS, intermediate_size=FFN,
                                              max_position_embeddings=64)), _ids),
    "distilbert": (lambda: T.DistilBertModel(T.DistilBertConfig(vocab_size=100, dim=HIDDEN, n_layers=LAYERS,
                                                                n_heads=HEADS, hidden_dim=FFN,
                                                                max_position_embeddings=64)), _ids),
    "gpt2": (lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=100, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                                    n_positions=64, use_cache=False, bos_token_id=0,
                                                    eos_token_id=0)), _ids),
    "falcon_mqa": (lambda: T.FalconForCausalLM(T.FalconConfig(  # multi-query: one KV head in a fused QKV
        vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        multi_query=True, new_decoder_architecture=False, use_cache=False)), _ids),
    "gpt_bigcode_mqa": (lambda: T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(  # one KV head, repeated by repeat_kv
        vocab_size=100, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=64, multi_query=True,
        use_cache=False)), _ids),
    "llama_gqa": (lambda: T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=100, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=64, use_cache=False)), _ids),
    "qwen2_gqa": (lambda: T.Qwen2ForCausalLM(T.Qwen2Config(
        vocab_size=100, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=64, use_cache=False,
        tie_word_embeddings=True)), _ids),
    "vit": (lambda: T.ViTForImageClassification(T.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=FFN, num_labels=5)), lambda: (torch.randn(1, 3, 16, 16),)),
    "whisper_encoder": (lambda: T.WhisperForAudioClassification(T.WhisperConfig(
        num_mel_bins=16, d_model=HIDDEN, encoder_layers=LAYERS, encoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN, max_source_positions=16, num_labels=3)), lambda: (torch.randn(1, 16, 32),)),
}


class Structure(enum.Enum):
    HEADS = "heads"        # groups that reach attention (a heads dim of scaled_dot_product_attention)
    HIDDEN = "hidden"      # the residual stream: the group with the most members besides heads
    CHANNELS = "channels"  # the rest: MLP intermediate channels (and conv/projector channels)


def structures(analysis) -> dict[Structure, list[str]]:
    """Heads: groups with a heads dim of attention; hidden: read by projections in every layer; the rest."""
    groups = analysis.dependencies.prunable
    heads = [g for g in groups if any(s.name.startswith("scaled_dot_product_attention") for s in g.members)]
    hidden = [g for g in groups if g not in heads
              and sum(s.role is Role.CONSUMER for s in g.members) >= 2 * LAYERS]
    return {Structure.HEADS: [g.id for g in heads], Structure.HIDDEN: [g.id for g in hidden],
            Structure.CHANNELS: [g.id for g in groups if g not in heads and g not in hidden]}


@functools.lru_cache(maxsize=None)
def analysed(name: str, gqa: str | None = None):
    torch.manual_seed(0)
    build, inputs = MODELS[name]
    model = build().eval()
    x = inputs()
    return model, x, graphprune.analyse(model, x, gqa=gqa)


def pruned(analysis, group_ids, ratio):
    strategy = Strategy("l2", ratios={gid: ratio for gid in group_ids})
    return analysis.prune(Ratio(0.0), strategy, target="none")



def _outputs(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = tuple(out.values())
    return [t for o in out for t in _outputs(o)] if isinstance(out, (tuple, list)) else []


def check(name, structure, ratio, onnx_dir=None, gqa=None):
    model, x, analysis = analysed(name, gqa)
    ids = structures(analysis)[structure]
    if name in ("bert", "distilbert") and structure is Structure.HIDDEN:
        # the last hidden state is the model's output: its width is the contract, so hidden stays frozen
        assert not ids and any("reaches model output" in r for g in analysis.dependencies.frozen
                               for r in g.frozen_reasons if g.size == HIDDEN)
        return
    assert ids, f"{name}: no {structure.value} group"
    result = pruned(analysis, ids, ratio)
    assert result.report.params_after < result.report.params_before
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in analysis.graph_module.parameters())
    with torch.no_grad():
        want = [t.shape for t in _outputs(model(*x))]
        got = [t.shape for t in _outputs(result.model(*x))]
    assert got == want
    if structure is not Structure.HIDDEN:  # no softmax/norm spans heads or MLP channels
        assert max_exactness_error(without_dtype_asserts(analysis.graph_module), x,
                                   SimpleNamespace(model=without_dtype_asserts(result.model), graph=result.graph,
                                                   plan=result.plan)) <= 1e-5
    if onnx_dir is not None:
        from graphprune.export import export_onnx
        assert export_onnx(result.model, x, onnx_dir / f"{name}.onnx").max_abs_diff <= 1e-4
    return result


DEFAULT = ("gpt2", "llama_gqa", "vit")  # the default-suite budget: the others run with -m slow


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in DEFAULT else pytest.mark.slow) for n in sorted(MODELS)])
def test_every_structure_of_one_model_prunes(name):
    """Every structure of one model at 0.3 (heads and MLP channels exact)."""
    for structure in Structure:
        check(name, structure, 0.3)


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("structure", list(Structure), ids=lambda s: s.value)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_structure_matrix_with_onnx(name, structure, ratio, tmp_path):
    check(name, structure, ratio, onnx_dir=tmp_path)


def test_llama_onnx_parity_with_every_structure_pruned(tmp_path):
    from graphprune.export import export_onnx
    model, x, analysis = analysed("llama_gqa")
    result = analysis.prune(Ratio(0.5), Strategy("l2"), target="none")
    kinds = {s: len(ids) for s, ids in structures(analysis).items()}
    assert kinds == {Structure.HEADS: LAYERS, Structure.HIDDEN: 1, Structure.CHANNELS: LAYERS}
    assert export_onnx(result.model, x, tmp_path / "llama.onnx").max_abs_diff <= 1e-4


def _llama(**overrides):
    config = dict(vocab_size=100, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=64, use_cache=False)
    return T.LlamaForCausalLM(T.LlamaConfig(**{**config, **overrides})).eval()


def test_gqa_query_heads_keeps_kv_heads_and_prunes_the_same_query_heads_in_every_group():
    model, x, analysis = analysed("llama_gqa", "query_heads")
    result = check("llama_gqa", Structure.HEADS, 0.5, gqa="query_heads")  # exact
    assert [(a.query_heads_after, a.kv_heads_after) for a in result.report.attention] == [(2, 2)] * LAYERS
    assert result.report.kv_bytes_per_token_after == result.report.kv_bytes_per_token_before
    with pytest.raises(graphprune.GraphPruneError, match="gqa must be one of"):
        graphprune.analyse(model, x, gqa="heads")


def test_a_plan_made_with_gqa_query_heads_replays_so():
    model, x, analysis = analysed("llama_gqa", "query_heads")
    result = pruned(analysis, structures(analysis)[Structure.HEADS], 0.5)
    assert result.plan.analysed_with == {"gqa": "query_heads"}
    replay = graphprune.apply_plan(model, x, graphprune.PrunePlan.from_json(result.plan.to_json()))
    assert replay.plan.analysed_with == {"gqa": "query_heads"}
    assert [(a.query_heads_after, a.kv_heads_after) for a in replay.report.attention] == [(2, 2)] * LAYERS
    with torch.no_grad():
        assert torch.equal(_outputs(replay.model(*x))[0], _outputs(result.model(*x))[0])


def test_multi_query_attention_prunes_query_heads_and_keeps_its_one_kv_head():
    """Falcon's fused QKV holds 4 query heads, then the key head and the value head ([..., :-2], [[-2]], [[-1]]):
    query heads prune exactly, the key/value rows stay (a partial freeze), the KV cache is unchanged."""
    _, _, analysis = analysed("falcon_mqa")
    fused = [g for g in analysis.dependencies.groups
             if any(s.name.endswith("query_key_value.weight") and s.role is Role.PRODUCER for s in g.members)]
    assert len(fused) == LAYERS and all(g.prunable and g.size == HEADS + 2 and len(g.pinned) == 2 for g in fused)
    assert all("holds a single channel" in p.reason and "multi-query" in p.reason for g in fused for p in g.pins)
    result = check("falcon_mqa", Structure.HEADS, 0.5)  # exact in float64
    assert [(a.query_heads_after, a.kv_heads_after) for a in result.report.attention] == [(HEADS // 2, 1)] * LAYERS
    head_dim = HIDDEN // HEADS
    rows = [p.shape[0] for n, p in result.model.named_parameters() if n.endswith("query_key_value.weight")]
    assert rows == [(HEADS // 2 + 2) * head_dim] * LAYERS
    assert result.report.kv_bytes_per_token_after == result.report.kv_bytes_per_token_before


def test_multi_query_attention_through_repeat_kv_prunes_query_heads_and_keeps_its_one_kv_head():
    """GPTBigCode (StarCoder) splits one key head and one value head off its fused c_attn and repeats them for every
    query head ((n, 1, 1, l, d) expanded to (n, 1, r, l, d)): the repeat dim carries the query heads, which prune
    exactly; the key/value rows stay whole and the KV cache is unchanged."""
    result = check("gpt_bigcode_mqa", Structure.HEADS, 0.5)  # exact in float64
    assert [(a.query_heads_after, a.kv_heads_after) for a in result.report.attention] == [(HEADS // 2, 1)] * LAYERS
    head_dim = HIDDEN // HEADS
    rows = [p.shape[0] for n, p in result.model.named_parameters() if n.endswith("attn.c_attn.weight")]
    assert rows == [(HEADS // 2 + 2) * head_dim] * LAYERS
    assert result.report.kv_bytes_per_token_after == result.report.kv_bytes_per_token_before


def test_report_measures_kv_cache_bytes_per_token_and_predicts_them():
    from graphprune.kvcache import predict_kv_bytes
    model, x, analysis = analysed("llama_gqa")
    result = check("llama_gqa", Structure.HEADS, 0.5)  # KV groups: a KV head goes with its query heads
    report = result.report
    head_dim = HIDDEN // HEADS
    assert report.kv_bytes_per_token_before == 2 * LAYERS * 2 * head_dim * 4  # 2 x layers x kv_heads x head_dim x fp32
    params = dict(result.model.named_parameters())
    kv_rows = sum(params[f"model.layers.{i}.self_attn.{p}_proj.weight"].shape[0] for i in range(LAYERS) for p in "kv")
    assert report.kv_bytes_per_token_after == kv_rows * 4 < report.kv_bytes_per_token_before
    assert predict_kv_bytes(analysis.stats.attention, analysis.dependencies, result.plan) == report.kv_bytes_per_token_after
    assert report.tokens == x[0].numel() and report.macs_per_token_after == report.macs_after / report.tokens
    assert report.weight_bytes_after == sum(p.numel() * 4 for p in result.model.parameters())
    assert "KV B/token" in report.summary() and "head_dim kept whole" in report.summary()


@pytest.mark.parametrize("keyword", ["target_kv_bytes", "target_params", "target_macs"])
def test_transformer_targets_are_met(keyword):
    model, x, analysis = analysed("llama_gqa")
    current = {"target_kv_bytes": analysis.stats.attention and sum(a.bytes_per_token for a in analysis.stats.attention),
               "target_params": analysis.stats.params, "target_macs": analysis.stats.macs}[keyword]
    goal = current * 6 // 10
    report = graphprune.prune_graph(model, x, **{keyword: goal}, target="none").report
    measured = {"target_kv_bytes": report.kv_bytes_per_token_after, "target_params": report.params_after,
                "target_macs": report.macs_after}[keyword]
    assert measured <= goal


@pytest.mark.slow  # ~10 s
def test_half_precision_model_prunes_like_float32():
    x = _ids()
    torch.manual_seed(0)
    full = graphprune.prune_graph(_llama(), x, ratio=0.3, target="none")
    torch.manual_seed(0)
    half = graphprune.prune_graph(_llama().half(), x, ratio=0.3, target="none")
    assert half.report.params_after == full.report.params_after < full.report.params_before
    assert half.report.weight_bytes_after * 2 == full.report.weight_bytes_after
    assert half.report.kv_bytes_per_token_after * 2 == full.report.kv_bytes_per_token_after
    with torch.no_grad():
        assert half.model(*x)[0].dtype == torch.float16


def test_a_cache_asked_for_and_unsplittable_heads_get_clear_errors():
    x = _ids()
    with pytest.raises(graphprune.errors.InputError, match="called with use_cache=True.*leave use_cache out"):
        graphprune.prune_graph(_llama(use_cache=True), x, ratio=0.3, example_kwargs={"use_cache": True})
    with pytest.raises(graphprune.errors.TraceError, match="torch.export cannot export LlamaForCausalLM"):
        graphprune.prune_graph(_llama(num_key_value_heads=3), x, ratio=0.3)  # 4 query heads, 3 KV heads


def test_a_model_whose_config_turns_the_cache_on_prunes_like_one_with_it_off():
    """graphprune analyses with the cache off by itself: the same plan and report, the caller's config as it was."""
    x = _ids()
    on, off = _llama(use_cache=True), _llama(use_cache=False)
    off.load_state_dict(on.state_dict())
    with_cache, without = (graphprune.prune_graph(m, x, ratio=0.3, target="none") for m in (on, off))
    assert on.config.use_cache and with_cache.plan.to_json() == without.plan.to_json()
    assert with_cache.report.params_after == without.report.params_after < with_cache.report.params_before


def test_a_tokenizer_given_as_the_model_gets_a_clear_error():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tokenizer = T.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")))
    with pytest.raises(graphprune.errors.InputError, match="must be a torch.nn.Module.*not its tokenizer"):
        graphprune.prune_graph(tokenizer, _ids(), ratio=0.3)


def test_the_config_solver_derives_no_head_size_where_the_config_has_no_hidden_size():
    """MobileViT's config has num_attention_heads but hidden_sizes per stage: no trial pins head_dim (reading
    config.hidden_size raised AttributeError out of result.module)."""
    from graphprune.hfconfig import config_trials
    config = T.MobileViTConfig(hidden_sizes=[8, 8, 8], neck_hidden_sizes=[8] * 6 + [16], num_attention_heads=4)
    trials = list(config_trials(T.MobileViTModel, config, {"conv.weight": ((16, 8), (8, 8))}, {}))
    assert {"num_attention_heads": 2} in trials and not any("head_dim" in t for t in trials)


@pytest.mark.slow  # ~10 s
def test_a_config_with_heads_but_per_stage_hidden_sizes_rebuilds_its_pruned_module():
    """MobileViT's config has num_attention_heads but hidden_sizes per stage (no hidden_size): the config solver
    derives no head size from it, and `result.module` (the caller's class, verified against the pruned graph)
    computes what the pruned graph computes."""
    torch.manual_seed(0)
    model = T.MobileViTForImageClassification(T.MobileViTConfig(
        image_size=32, hidden_sizes=[8, 8, 8], neck_hidden_sizes=[8] * 6 + [16], num_attention_heads=2, expand_ratio=2.0,
        mlp_ratio=1.0, num_labels=5)).eval()
    x = (torch.randn(1, 3, 32, 32),)
    result = graphprune.prune_graph(model, x, ratio=0.3, target="none")
    assert result.report.params_after < result.report.params_before
    module = result.module
    assert type(module) is type(model) and sum(p.numel() for p in module.parameters()) == result.report.params_after
    with torch.no_grad():
        torch.testing.assert_close(module(*x).logits, result.model(*x).logits, rtol=1e-5, atol=1e-6)
