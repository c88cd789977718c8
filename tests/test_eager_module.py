"""result.module: the caller's own class, pruned, verified against result.model (graphprune.eager).

Zoo models through fx, user modules with size attributes, MultiheadAttention and LSTM (replaced by the
rules), code that bakes a size (falls back with the file:line), and tiny random Hugging Face models
through torch.export: same outputs, greedy generate() with the KV cache, save_pretrained/from_pretrained.
"""
import os

import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.eager import EagerRebuildError
from graphprune.models import ZOO


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, frontend", [("resnet18", "fx"), ("mobilenet_v2", "fx"), ("vit_tiny", "fx"),
                                            pytest.param("mobilenet_v2", "export", marks=pytest.mark.slow)])
def test_zoo_model_comes_back_as_its_own_class_with_the_graph_modules_outputs(name, frontend):
    spec = ZOO[name]
    model = spec.build()
    x = spec.example_inputs()[0] if name == "vit_tiny" else torch.randn(1, 3, 64, 64)
    before = _state(model)
    result = graphprune.prune_graph(model, x, ratio=0.5, frontend=frontend)
    module = result.module
    assert type(module) is type(model) and module is not model
    assert _params(module) == result.report.params_after < _params(model)
    with torch.no_grad():
        torch.testing.assert_close(module(x), result.model(x), rtol=0, atol=1e-6)
    assert _unchanged(model, before)
    assert result.module is module  # computed once


class Mixer(nn.Module):
    """Reads its widths from attributes: self.width in a reshape, self.heads in a view."""

    def __init__(self, width=32, heads=4):
        super().__init__()
        self.width, self.heads = width, heads
        self.inp = nn.Linear(16, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.mha = nn.MultiheadAttention(width, heads, batch_first=True)
        self.lstm = nn.LSTM(width, 24, batch_first=True)
        self.out = nn.Linear(24, 5)

    def forward(self, x):
        h = self.inp(x).reshape(x.shape[0], x.shape[1], self.width).relu()
        h = h + self.mha(h, h, h, need_weights=False)[0]
        y, _ = self.lstm(h)
        return self.out(y)


def test_user_module_gets_its_size_attributes_and_rule_replaced_layers():
    model = Mixer().eval()
    x = torch.randn(2, 6, 16)
    before = _state(model)
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none", frontend="fx")
    module = result.module
    assert isinstance(module, Mixer)
    assert module.width == module.inp.out_features == module.inp.weight.shape[0] < 32
    assert type(module.mha) is not nn.MultiheadAttention  # heads no longer fill embed_dim: PrunedMultiheadAttention
    assert module.lstm.weight_hh_l0.shape[1] < 24 or type(module.lstm) is not nn.LSTM
    with torch.no_grad():
        torch.testing.assert_close(module(x), result.model(x), rtol=0, atol=1e-6)
    assert _unchanged(model, before) and model.width == 32 and type(model.mha) is nn.MultiheadAttention


class ConvNorm(nn.Module):
    """A conv with its norm, as ultralytics' Conv wraps them: the tensors lie one level below the wrapper."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.conv(x))


class WrappedAttention(nn.Module):
    """YOLO11's C2PSA attention in small: heads of a fused qkv conv, sized by `num_heads` at run time."""

    def __init__(self, dim=16, num_heads=2):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.stem, self.qkv, self.proj = ConvNorm(3, dim), ConvNorm(dim, 3 * dim), ConvNorm(dim, dim)

    def forward(self, x):
        x = self.stem(x)
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).view(b, self.num_heads, 3 * self.head_dim, h * w).split([self.head_dim] * 3, dim=2)
        attention = (q.transpose(-2, -1) @ k * self.head_dim ** -0.5).softmax(dim=-1)
        return self.proj((v @ attention.transpose(-2, -1)).reshape(b, self.num_heads * self.head_dim, h, w))


def test_a_head_count_is_matched_against_tensors_one_wrapper_down():
    """The attention's own children (ConvNorm) hold no tensors; its grandchildren do: `num_heads` follows the
    pruned heads (it stayed 2 and the rebuilt view failed)."""
    torch.manual_seed(0)
    model, x = WrappedAttention().eval(), torch.randn(1, 3, 4, 4)
    analysis = graphprune.analyse(model, x, frontend="fx")
    heads = [g for g in analysis.dependencies.prunable
             if any(s.name == "qkv.conv.weight" and s.role.name == "PRODUCER" for s in g.members)]
    assert [g.size for g in heads] == [2]
    result = analysis.prune(graphprune.options.Ratio(0.0), graphprune.options.Strategy(
        "l2", ratios={heads[0].id: 0.5}), target="none")
    module = result.module
    assert module.num_heads == 1 and module.qkv.conv.out_channels == 24 and module.head_dim == 8
    with torch.no_grad():
        torch.testing.assert_close(module(x), result.model(x), rtol=0, atol=1e-6)


class Baked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.b(self.a(x).view(-1, 32).relu())  # the literal 32 cannot follow pruning


def test_code_that_bakes_a_size_falls_back_with_its_line():
    model = Baked().eval()
    result = graphprune.prune_graph(model, torch.randn(3, 8), ratio=0.5, target="none", frontend="fx")
    with pytest.raises(EagerRebuildError, match=r"test_eager_module\.py:\d+ in forward: `return self\.b\(self\.a"):
        _ = result.module
    assert isinstance(EagerRebuildError("x"), graphprune.GraphPruneError)
    assert result.model(torch.randn(3, 8)).shape == (3, 4)  # the fallback still works


def test_zoo_shufflenet_chunks_equal_halves_so_its_own_class_rebuilds():
    """x.chunk(2, dim=1) splits at half the pruned width: the plan keeps equal halves (tests/test_code_valid_plans.py)."""
    spec = ZOO["shufflenet_v2_x1_0"]
    model, x = spec.build().eval(), torch.randn(1, 3, 64, 64)
    result = graphprune.prune_graph(model, x, ratio=0.5, frontend="fx")
    module = result.module
    assert type(module) is type(model) and _params(module) == result.report.params_after < _params(model)
    with torch.no_grad():
        torch.testing.assert_close(module(x), result.model(x), rtol=0, atol=1e-6)


def test_an_exported_program_has_no_eager_class():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(2, 8)
    result = graphprune.prune_graph(torch.export.export(model, (x,)), x, ratio=0.5, target="none")
    with pytest.raises(EagerRebuildError, match="ExportedProgram"):
        _ = result.module


# -- Hugging Face -------------------------------------------------------------------------------------------
os.environ["HF_HUB_OFFLINE"] = "1"
LENGTH, PROMPT, NEW = 12, 4, 8


def _gpt2(transformers):
    """As users have it: the config's use_cache defaults to True."""
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64))


def _llama_gqa(transformers):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64))


def _greedy_with_graph(gm, prompt: torch.Tensor) -> torch.Tensor:
    """Greedy decoding with the static-shape graph and no cache: the sequence right-padded to LENGTH (causal
    attention: position t never sees the padding after it), the next token read at the last real position."""
    buffer = torch.zeros(1, LENGTH, dtype=torch.long)
    buffer[0, :PROMPT] = prompt[0]
    with torch.no_grad():
        for t in range(PROMPT, PROMPT + NEW):
            buffer[0, t] = gm(buffer).logits[0, t - 1].argmax()
    return buffer[:, :PROMPT + NEW]


@pytest.mark.parametrize("build", [_gpt2, _llama_gqa], ids=["gpt2", "llama_gqa"])
def test_causal_lm_generates_with_the_kv_cache_and_round_trips_through_save_pretrained(build, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = build(transformers).eval()
    ids = torch.randint(0, 100, (1, LENGTH))
    before = _state(model)
    config_before = model.config.to_dict()
    assert model.config.use_cache  # as the model comes: analysed with the cache off by graphprune itself
    result = graphprune.prune_graph(model, (ids,), ratio=0.5, target="none")
    module = result.module
    assert type(module) is type(model) and _params(module) == result.report.params_after < _params(model)
    assert module.config.use_cache and module(ids).past_key_values is not None
    with torch.no_grad():
        torch.testing.assert_close(module(ids).logits, result.model(ids).logits, rtol=1e-5, atol=1e-5)

    module.generation_config.eos_token_id = None  # always NEW tokens
    prompt = ids[:, :PROMPT]
    with torch.no_grad():
        tokens = module.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW,
                                 do_sample=False, use_cache=True, pad_token_id=0)
    assert torch.equal(tokens, _greedy_with_graph(result.model, prompt))

    module.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, module(ids).logits)
    assert _unchanged(model, before) and model.config.to_dict() == config_before


def test_counts_the_class_derives_from_its_config_follow_the_pruned_heads():
    """Llama keeps num_key_value_groups = heads / KV heads in each attention and reads it only where attention
    gets a mask (repeat_kv; without one SDPA repeats the KV heads itself). 2 of 1 heads pruned to 1 of 1: the
    rebuilt module holds 1, as its reload would, so it runs with a mask and under torch.export."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64)).eval()
    ids = torch.randint(0, 100, (1, LENGTH))
    result = graphprune.prune_graph(model, (ids,), ratio=0.5, target="none")
    module = result.module
    config = module.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (1, 1)
    assert module.model.layers[0].self_attn.num_key_value_groups == 1
    assert model.model.layers[0].self_attn.num_key_value_groups == 2  # the caller's model is untouched
    with torch.no_grad():
        masked = module(ids, attention_mask=torch.ones_like(ids)).logits
        torch.testing.assert_close(masked, result.model(ids).logits, rtol=1e-5, atol=1e-5)


def test_bert_with_pruned_heads_runs_but_refuses_save_pretrained(tmp_path):
    """BERT's config derives head size = hidden / heads, so no BertConfig expresses fewer heads at the same
    hidden size: the eager module works, save_pretrained raises instead of writing a config that lies."""
    transformers = pytest.importorskip("transformers")
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64)).eval()
    ids = torch.randint(0, 100, (1, 8))
    result = graphprune.prune_graph(model, (ids,), ratio=0.5, target="none")
    module = result.module
    assert isinstance(module, transformers.BertModel)
    assert module.encoder.layer[0].attention.self.query.out_features < 32
    with torch.no_grad():
        torch.testing.assert_close(module(ids).last_hidden_state, result.model(ids).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(EagerRebuildError, match="save_pretrained"):
        module.save_pretrained(tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # ~12 s
def test_global_ranking_with_uniform_layers_gives_a_config_that_reloads(tmp_path):
    """Global scope ranks channels across layers, so each layer may keep its own count; uniform_layers=True
    gives every copy of a repeated group one count, which a Hugging Face config can state."""
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, use_cache=False)).eval()
    ids = torch.randint(0, 100, (1, LENGTH))

    def mlp_widths(result):
        return [layer.mlp.up_proj.out_features for layer in result.module.model.layers]

    uneven = graphprune.prune_graph(model, (ids,), ratio=0.4, scope="global", importance="random", target="none")
    even = graphprune.prune_graph(model, (ids,), ratio=0.4, scope="global", importance="random", target="none",
                                  uniform_layers=True)
    assert len(set(mlp_widths(uneven))) > 1  # the ranking alone leaves the layers uneven (random scores, seed 0)
    assert len(set(mlp_widths(even))) == 1 and mlp_widths(even)[0] < 64
    even.module.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert reloaded.config.intermediate_size == mlp_widths(even)[0]
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, even.module(ids).logits)


def test_a_saved_config_keeps_the_head_size(tmp_path):
    """Regression: Whisper pruned at 0.5 once saved 4 heads of 4 instead of 2 heads of 8 (the same shapes, and
    on small random weights outputs within 1e-6); a config is accepted only when the class it builds gives the
    verified copy's outputs bit for bit, and a head is never split."""
    transformers = pytest.importorskip("transformers")
    model = transformers.WhisperForAudioClassification(transformers.WhisperConfig(
        num_mel_bins=16, d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
        max_source_positions=16, num_labels=3)).eval()
    x = torch.randn(1, 16, 32)
    module = graphprune.prune_graph(model, x, ratio=0.5, target="none").module
    module.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    heads = [layer.self_attn for layer in reloaded.encoder.layers]
    assert all(a.head_dim == model.encoder.layers[0].self_attn.head_dim for a in heads)
    assert all(a.num_heads < 4 for a in heads)
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, module(x).logits)


def test_a_size_two_levels_down_that_equals_an_attribute_by_chance_is_verified_not_taken():
    """A Swin block's window_size is 4 and its attention (two levels down) has 4 heads, pruned to 2: the block's
    window must stay 4, so a match found only two levels down is a candidate that verification rejects."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.SwinForImageClassification(transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=5))
    x = (torch.randn(1, 3, 32, 32),)
    result = graphprune.prune_graph(model.eval(), x, ratio=0.3, target="none")
    module = result.module
    block = module.swin.encoder.layers[1].blocks[0]
    assert block.attention.num_attention_heads == 2 and block.window_size == 4
    torch.testing.assert_close(module(*x).logits, result.model(*x).logits)
