"""prune_checkpoint (issue 24): a Hugging Face safetensors checkpoint pruned without loading its weights.

The oracle is the in-memory path: prune_graph on the same model loaded in float32 with the same magnitude
criterion gives the same plan, its pruned module (result.module) the same tensors (bit for bit, once the
checkpoint's bf16 values are cast up, which is exact), and the written checkpoint, loaded by from_pretrained,
the same logits. One tiny Llama (hidden 32, 2 layers, 4 heads, 2 KV heads) is saved in bf16, with tied
embeddings and in several shards, so one run checks dtype, ties, sharding and the index.
"""
import json
import os

import pytest
import torch

import graphprune
from graphprune.checkpoint import Checkpoint, is_checkpoint_dir, prune_checkpoint
from checkpoint_support import disk_fills_after
from graphprune.errors import GraphPruneError, InputError

os.environ["HF_HUB_OFFLINE"] = "1"
T = pytest.importorskip("transformers")
INDEX = "model.safetensors.index.json"


def _llama(tied: bool) -> "T.LlamaForCausalLM":
    config = T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, use_cache=False,
                           tie_word_embeddings=tied)
    torch.manual_seed(0)
    return T.LlamaForCausalLM(config).eval()


def _ids():
    return torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))


def _stored(directory: str) -> dict:
    from safetensors.torch import load_file

    names = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    return {k: v for name in names for k, v in load_file(os.path.join(directory, name)).items()}


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    src, out = str(root / "src"), str(root / "out")
    _llama(tied=True).to(torch.bfloat16).save_pretrained(src, max_shard_size="8KB")
    streamed = prune_checkpoint(src, out, ratio=0.5, importance="l2", target="none")
    dense = T.LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()  # bf16 -> fp32 is exact
    in_memory = graphprune.prune_graph(dense, (_ids(),), ratio=0.5, importance="l2", target="none")
    return src, out, streamed, in_memory


@pytest.mark.slow  # the shared fixture takes about two minutes on 2 cores
def test_the_plan_equals_prune_graphs(bf16_run):
    _, _, streamed, in_memory = bf16_run
    assert streamed.plan.keep == in_memory.plan.keep
    assert streamed.plan.keep  # something was pruned
    assert streamed.report.params_after == in_memory.report.params_after < in_memory.report.params_before


@pytest.mark.slow  # the shared fixture takes about two minutes on 2 cores
def test_the_written_tensors_are_result_modules_in_bf16(bf16_run):
    src, out, _, in_memory = bf16_run
    stored, source = _stored(out), _stored(src)
    expected = in_memory.module.state_dict()
    assert set(stored) == set(source)  # same keys: a tied weight stored once, as save_pretrained stored it
    for key, tensor in stored.items():
        assert tensor.dtype == source[key].dtype == torch.bfloat16, key
        assert torch.equal(tensor.float(), expected[key]), key
    assert any(stored[k].shape != source[k].shape for k in stored)


@pytest.mark.slow  # the shared fixture takes about two minutes on 2 cores
def test_the_output_is_sharded_like_the_input_with_a_valid_index(bf16_run):
    src, out, streamed, _ = bf16_run
    index, old = (json.load(open(os.path.join(d, INDEX))) for d in (out, src))
    assert len(set(old["weight_map"].values())) > 1
    assert index["weight_map"] == old["weight_map"]
    by_file = {}
    for key, name in index["weight_map"].items():
        by_file.setdefault(name, set()).add(key)
    from safetensors import safe_open

    total = 0
    for name, keys in by_file.items():
        with safe_open(os.path.join(out, name), framework="pt") as f:
            assert set(f.keys()) == keys
            total += sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in keys)
    assert index["metadata"]["total_size"] == total == streamed.bytes_written
    assert "generation_config.json" in os.listdir(out)
    assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".graphprune-")]


@pytest.mark.slow  # the shared fixture takes about two minutes on 2 cores
def test_the_checkpoint_loads_tied_and_computes_result_modules_logits(bf16_run):
    _, out, streamed, in_memory = bf16_run
    loaded = T.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    module = in_memory.module
    for field in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        assert getattr(loaded.config, field) == getattr(module.config, field), field
    assert streamed.config_changes  # the sizes pruning changed
    reloaded = T.LlamaForCausalLM.from_pretrained(out).eval()
    assert reloaded.dtype == torch.bfloat16
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, module(ids).logits)


def test_an_existing_output_or_a_criterion_it_cannot_stream_fails_before_anything_is_written(tmp_path):
    _llama(tied=False).save_pretrained(str(tmp_path / "src"))
    assert is_checkpoint_dir(tmp_path / "src") and not is_checkpoint_dir(tmp_path)
    assert Checkpoint.open(tmp_path / "src").shards == ("model.safetensors",)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(graphprune.GraphPruneError, match="not empty"):
        prune_checkpoint(tmp_path / "src", tmp_path / "full", ratio=0.5)
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    with pytest.raises(InputError, match=r"other criteria \(taylor: gradients through the whole model\) need it in memory"):
        prune_checkpoint(tmp_path / "src", tmp_path / "out", ratio=0.5, importance="taylor")
    with pytest.raises(InputError, match="data-driven: pass calibration"):
        prune_checkpoint(tmp_path / "src", tmp_path / "out", ratio=0.5, importance="wanda")
    with pytest.raises(InputError, match="no config.json"):
        prune_checkpoint(tmp_path / "full", tmp_path / "out", ratio=0.5)
    assert sorted(os.listdir(tmp_path)) == ["full", "src"]  # no output, no staging directory left


@pytest.mark.slow
def test_float32_untied_single_file_with_l1(tmp_path):
    model = _llama(tied=False)
    model.save_pretrained(str(tmp_path / "src"))
    streamed = prune_checkpoint(tmp_path / "src", tmp_path / "out", ratio=0.3, importance="l1", target="none")
    in_memory = graphprune.prune_graph(model, (_ids(),), ratio=0.3, importance="l1", target="none")
    assert streamed.plan.keep == in_memory.plan.keep
    expected, stored = in_memory.module.state_dict(), _stored(str(tmp_path / "out"))
    assert all(torch.equal(v, expected[k]) for k, v in stored.items()) and "lm_head.weight" in stored
    loaded = T.LlamaForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    with torch.no_grad():
        assert torch.equal(loaded(_ids()).logits, in_memory.module(_ids()).logits)


@pytest.mark.slow
def test_an_encoder_prunes_its_mlp_and_refuses_heads_its_config_cannot_state(tmp_path):
    """BERT derives head size = hidden / heads: with the hidden size frozen (it reaches the output), no config
    states fewer heads, so pruning them fails before writing; with the heads kept, the MLP is pruned."""
    config = T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = T.BertModel(config).eval()
    model.save_pretrained(str(tmp_path / "src"))
    with pytest.raises(graphprune.GraphPruneError, match="no BertConfig describes the pruned model"):
        prune_checkpoint(tmp_path / "src", tmp_path / "out", ratio=0.5, target="none")
    assert sorted(os.listdir(tmp_path)) == ["src"]
    keep_heads = {"encoder.layer.0.attention": 0.0, "encoder.layer.1.attention": 0.0}
    streamed = prune_checkpoint(tmp_path / "src", tmp_path / "out", ratio=0.5, target="none", ratios=keep_heads)
    in_memory = graphprune.prune_graph(model, (_ids(),), ratio=0.5, importance="l2", target="none", ratios=keep_heads)
    assert streamed.plan.keep == in_memory.plan.keep and streamed.config_changes == {"intermediate_size": 32}
    loaded = T.BertModel.from_pretrained(str(tmp_path / "out")).eval()
    expected = in_memory.module.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    with torch.no_grad():
        assert torch.equal(loaded(_ids()).last_hidden_state, in_memory.module(_ids()).last_hidden_state)


def test_a_shard_written_header_first_reads_back_with_safetensors(tmp_path):
    """write.shard_header + the tensors' bytes appended in order: what save_file writes, tensor by tensor."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from graphprune.checkpoint.write import shard_header

    tensors = {"b.weight": torch.randn(3, 5).to(torch.bfloat16), "a.ids": torch.arange(7),
               "c.weight": torch.randn(2, 2, 2, dtype=torch.float64), "empty": torch.ones(0, 4),
               "h": torch.randn(3).half(), "flag": torch.tensor([True, False])}
    path = str(tmp_path / "one.safetensors")
    with open(path, "wb") as f:
        f.write(shard_header([(k, t.dtype, tuple(t.shape)) for k, t in tensors.items()], {"format": "pt"}))
        for t in tensors.values():
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    loaded = load_file(path)
    assert loaded.keys() == tensors.keys()
    assert all(loaded[k].dtype == t.dtype and torch.equal(loaded[k], t) for k, t in tensors.items())
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt"}


@pytest.mark.parametrize("damage", ["garbage", "truncated", "lying_offsets"])
def test_a_corrupt_safetensors_file_is_one_input_error(tmp_path, damage):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text("{}")
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(4, 4)}, str(path))
    data = path.read_bytes()
    if damage == "garbage":
        data = b"\xff" * 8 + data[8:]
    elif damage == "truncated":
        data = data[:-10]
    else:
        data = data.replace(b'"data_offsets":[0,64]', b'"data_offsets":[0,60]')
        assert b"[0,60]" in data
    path.write_bytes(data)
    with pytest.raises(InputError, match="is not a readable safetensors file"):
        Checkpoint.open(tmp_path)


def _saved_tiny(tmp_path) -> str:
    src = str(tmp_path / "src")
    _llama(tied=False).save_pretrained(src)
    return src


def test_a_config_of_an_unknown_architecture_is_one_input_error_and_nothing_is_written(tmp_path):
    src = _saved_tiny(tmp_path)
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump({**config, "model_type": "no_such_model", "architectures": ["NoSuchForCausalLM"]}, f)
    with pytest.raises(InputError, match="config.json"):
        prune_checkpoint(src, tmp_path / "out", ratio=0.3)
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no output, no staging directory left


def test_a_full_filesystem_is_one_error_and_leaves_no_partial_output(tmp_path, monkeypatch):
    """The disk fills up in the middle of a shard: one GraphPruneError naming the destination, nothing left."""
    src = _saved_tiny(tmp_path)
    calls = disk_fills_after(monkeypatch, 3)
    with pytest.raises(GraphPruneError, match="No space left on device.*free space there"):
        prune_checkpoint(src, tmp_path / "out", ratio=0.3)
    assert len(calls) == 4 and sorted(os.listdir(tmp_path)) == ["src"]


def test_an_out_path_under_a_file_is_one_error_before_any_work(tmp_path):
    src = _saved_tiny(tmp_path)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(GraphPruneError, match="is a file, not a directory"):
        prune_checkpoint(src, tmp_path / "afile" / "out", ratio=0.3)
