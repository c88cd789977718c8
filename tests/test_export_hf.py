"""Hugging Face smoke test: tiny random BERT, GPT-2 and Llama (grouped-query attention) export through the
torch.export frontend, analyse, prune and run. Never downloads (HF_HUB_OFFLINE=1, models built from configs).

Run with -s to see what is prunable and what freezes the rest (input for the transformer work)."""
import ctypes
import os
import sys
from collections import Counter

import pytest
import torch

import graphprune

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")

from graphprune.dependencies import build_dependency_graph as analyse  # noqa: E402
from graphprune.frontends import export_graph  # noqa: E402
from graphprune.rules.aten import aten_rules  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_export_frontend import prune_exported  # noqa: E402

LAYERS, HEADS = 2, 4


def bert():
    return transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=64,
        max_position_embeddings=64))


def gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=100, n_embd=32, n_layer=LAYERS, n_head=HEADS, n_positions=64, use_cache=False))


def llama_gqa():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=2, max_position_embeddings=64, use_cache=False))


def _main_output(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("build", [bert, gpt2, llama_gqa], ids=lambda f: f.__name__)
def test_hugging_face_model_exports_analyses_and_prunes(build):
    torch.manual_seed(0)
    model = build().eval()
    ids = torch.randint(0, 100, (1, 8))
    gm = export_graph(model, (ids,))
    graph = analyse(gm, aten_rules())
    reasons = Counter(r.split(" ", 1)[-1] if r.startswith("`") else r for g in graph.frozen for r in g.frozen_reasons)
    print(f"\n{build.__name__}: {len(graph.prunable)} prunable groups {sorted(g.size for g in graph.prunable)}, "
          f"{len(graph.frozen)} frozen: {dict(reasons)}")
    assert len(graph.prunable) >= LAYERS  # at least every MLP's hidden units
    result = prune_exported(gm, (ids,))
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in gm.parameters())
    with torch.no_grad():
        assert _main_output(result.model(ids)).shape == _main_output(model(ids)).shape


@pytest.mark.parametrize("build", [bert, gpt2, llama_gqa], ids=lambda f: f.__name__)
def test_prune_graph_takes_hugging_face_models_through_export_at_ratio_0_3(build):
    """The public call, frontend "auto": fx cannot trace these, so export runs; counts are measured."""
    torch.manual_seed(0)
    model = build().eval()
    ids = torch.randint(0, 100, (1, 8))
    result = graphprune.prune_graph(model, (ids,), ratio=0.3, target="none")
    report = result.report
    assert report.frontend.startswith("export (torch.fx cannot trace")
    assert report.params_after < report.params_before == sum(p.numel() for p in model.parameters())
    assert 0 < report.macs_after < report.macs_before
    with torch.no_grad():
        assert _main_output(result.model(ids)).shape == _main_output(model(ids)).shape


def test_t5_with_an_attention_mask_exports_to_onnx_once_its_heads_are_pruned(tmp_path):
    """T5's attention output `.transpose(1, 2).reshape(b, L, -1)` re-traces as a view on the layout CPU attention
    returns, which the dynamo exporter's own attention kernel does not return: the export reads a contiguous copy
    (an Identity in ONNX), and ONNX Runtime matches the pruned graph (the exporter failed: "Cannot view")."""
    from graphprune.export import export_onnx
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=HEADS)).eval()
    ids = torch.randint(1, 100, (1, 12))
    x = (ids, torch.ones_like(ids))
    result = graphprune.prune_graph(model, x, ratio=0.3, target="none")
    assert [0 < a.query_heads_after < HEADS for a in result.report.attention] == [True]
    assert export_onnx(result.model, x, tmp_path / "t5.onnx").max_abs_diff <= 1e-4


def test_a_decoder_with_its_cache_on_exports_its_logits_to_onnx(tmp_path, capfd):
    """from_pretrained gives use_cache=True, and forward then returns a DynamicCache that ONNX cannot hold: the
    export runs with the cache off (what graphprune analyses and prunes) and leaves the config as it was. The
    TorchScript exporter, tried first, fails on an op of the attention mask and must not print its IR graph."""
    from graphprune.export import export_onnx

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=HEADS,
        num_key_value_heads=2, max_position_embeddings=64)).eval()
    assert model.config.use_cache is True
    ids = torch.randint(0, 100, (1, 8))
    exported = export_onnx(model, (ids,), tmp_path / "llama.onnx")
    assert exported.max_abs_diff <= 1e-4 and model.config.use_cache is True
    import onnx
    (logits,) = onnx.load(str(tmp_path / "llama.onnx")).graph.output
    assert [d.dim_value for d in logits.type.tensor_type.shape.dim] == [1, 8, 100]
    ctypes.CDLL(None).fflush(None)  # C++ std::cout is buffered by C's stdio: what it holds is written now
    assert exported.exporter == "dynamo" and "Torch IR graph" not in capfd.readouterr().out


def test_an_eager_mixture_of_experts_exports_to_onnx(tmp_path):
    """transformers runs Mixtral's experts through its grouped_mm_fallback op, which the dynamo exporter cannot
    translate: the eager model goes through its torch.export graph with the products in plain ops."""
    from graphprune.export import export_onnx

    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(transformers.MixtralConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=HEADS,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64)).eval()
    ids = torch.randint(0, 100, (1, 8))
    exported = export_onnx(model, (ids,), tmp_path / "mixtral.onnx")
    assert exported.exporter == "dynamo" and exported.max_abs_diff <= 1e-4
