"""prune_checkpoint_layers (issue 24, item 3): depth pruning of a checkpoint directory, one layer in memory at a time.

The oracle is the in-memory path: the checkpoint loaded with from_pretrained (float32, or float64 for a float64
checkpoint), graphprune.depth.prune_layers with the same calibration batches, save_pretrained. The streamed run
gives the same block-influence scores (bit for bit), removes the same layers, and writes the same tensors under
the same keys and the same config; its checkpoint loads and generates the same greedy tokens.
"""
import json
import os
import sys

import pytest
import torch

import graphprune
from graphprune.checkpoint import prune_checkpoint_layers
from graphprune.depth import prune_layers
from checkpoint_support import calibration_batches as _batches, disk_fills_after, stored_tensors as _stored
from graphprune.errors import GraphPruneError, InputError

os.environ["HF_HUB_OFFLINE"] = "1"
T = pytest.importorskip("transformers")
LAYERS = 5
INDEX = "model.safetensors.index.json"


def _config(cls=None, **extra):
    cls = cls or T.LlamaConfig
    return cls(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, use_cache=False, **extra)


def _save(directory, config, dtype=torch.float32, shard="30KB"):
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    model.to(dtype).save_pretrained(str(directory), max_shard_size=shard)
    return str(directory)


def _in_memory(src, dtype, calibration, out):
    """The oracle: from_pretrained, prune_layers, save_pretrained into `out`."""
    dense = T.AutoModelForCausalLM.from_pretrained(src, dtype=dtype).eval()
    result = prune_layers(dense, n=2, calibration=calibration)
    result.model.save_pretrained(str(out))
    return result


@pytest.fixture(scope="module", params=[torch.float32, torch.float64], ids=["float32", "float64"])
def runs(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("depth")
    src = _save(root / "src", _config(), request.param)
    streamed = prune_checkpoint_layers(src, root / "out", n=2, calibration=_batches())
    in_memory = _in_memory(src, request.param, [(b,) for b in _batches()], root / "memory")
    return root, streamed, in_memory


def test_the_removed_layers_and_scores_equal_prune_layers(runs):
    _, streamed, in_memory = runs
    assert streamed.scores == in_memory.scores  # bit for bit: the same layers run on the same hidden states
    assert streamed.removed == in_memory.removed and len(streamed.removed) == 2
    assert streamed.layers == in_memory.layers == "model.layers"


def test_the_written_tensors_and_config_equal_save_pretrained_of_the_pruned_model(runs):
    root, streamed, in_memory = runs
    written, expected = _stored(root / "out"), _stored(root / "memory")
    assert set(written) == set(expected)
    for key, tensor in expected.items():
        assert written[key].dtype == tensor.dtype and torch.equal(written[key], tensor), key
    with open(root / "out" / "config.json") as f, open(root / "memory" / "config.json") as g:
        config, oracle = json.load(f), json.load(g)
    assert config["num_hidden_layers"] == oracle["num_hidden_layers"] == LAYERS - 2
    assert {k: v for k, v in config.items() if k != "transformers_version"} == \
           {k: v for k, v in oracle.items() if k != "transformers_version"}
    assert streamed.config_changes == {"num_hidden_layers": LAYERS - 2}
    assert streamed.params_before == in_memory.params_before and streamed.params_after == in_memory.params_after
    assert streamed.bytes_written == sum(t.numel() * t.element_size() for t in written.values())


def test_the_kept_layers_are_renumbered_shard_by_shard_and_empty_shards_are_not_written(runs):
    root, streamed, _ = runs
    source, written = _stored(root / "src"), _stored(root / "out")
    kept = [k for k in range(LAYERS) if k not in streamed.removed]
    for new, old in enumerate(kept):
        for key in [k for k in source if k.startswith(f"model.layers.{old}.")]:
            assert torch.equal(written[key.replace(f".{old}.", f".{new}.", 1)], source[key]), key
    with open(root / "src" / INDEX) as f, open(root / "out" / INDEX) as g:
        old_map, new_map = json.load(f)["weight_map"], json.load(g)["weight_map"]
    assert set(new_map) == set(written)
    holding = {shard for key, shard in old_map.items() if not any(key.startswith(f"model.layers.{r}.")
                                                                   for r in streamed.removed)}
    shards = {n for n in os.listdir(root / "out") if n.endswith(".safetensors")}
    assert shards == holding == set(new_map.values())
    assert len(shards) < len(set(old_map.values()))  # this model has a shard of removed tensors only
    assert "generation_config.json" in streamed.files
    assert not [n for n in os.listdir(root) if n.startswith(".graphprune-")]


def test_the_written_checkpoint_generates_the_in_memory_pruned_models_tokens(runs):
    root, _, in_memory = runs
    dtype = in_memory.model.dtype
    loaded = T.AutoModelForCausalLM.from_pretrained(str(root / "out"), dtype=dtype).eval()
    assert len(loaded.model.layers) == LAYERS - 2
    prompt = _batches()[0][:1]
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=True)  # the KV cache's layer_idx
    with torch.no_grad():
        tokens = loaded.generate(prompt, **settings)
        assert torch.equal(tokens, in_memory.model.generate(prompt, **settings))
        assert torch.equal(loaded(prompt).logits, in_memory.model(prompt).logits)


def test_padding_is_left_out_of_the_scores_as_prune_layers_does(tmp_path):
    src = _save(tmp_path / "src", _config(), shard="1GB")  # one model.safetensors, no index
    batches = []
    for k, ids in enumerate(_batches()):
        mask = torch.ones_like(ids)
        mask[0, 5 - k:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask})
    streamed = prune_checkpoint_layers(src, tmp_path / "out", n=2, calibration=batches)
    dense = T.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    assert streamed.scores == prune_layers(dense, n=2, calibration=batches).scores
    assert streamed.scores != prune_layers(dense, n=2, calibration=[(b["input_ids"],) for b in batches]).scores
    assert sorted(n for n in streamed.files if "safetensors" in n) == ["model.safetensors"]
    assert torch.equal(_stored(tmp_path / "out")["model.norm.weight"], _stored(src)["model.norm.weight"])


def test_a_bf16_checkpoint_stays_bf16_and_loses_the_layers_float32_scores_choose(tmp_path):
    src = _save(tmp_path / "src", _config(tie_word_embeddings=True), torch.bfloat16, shard="20KB")
    streamed = prune_checkpoint_layers(src, tmp_path / "out", n=2, calibration=_batches())
    dense = T.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()  # bf16 -> fp32 is exact
    oracle = prune_layers(dense, n=2, calibration=_batches())
    assert streamed.scores == oracle.scores and streamed.removed == oracle.removed
    source, written = _stored(src), _stored(tmp_path / "out")
    assert {t.dtype for t in written.values()} == {torch.bfloat16}
    assert "lm_head.weight" not in written and torch.equal(written["model.embed_tokens.weight"],
                                                           source["model.embed_tokens.weight"])
    kept = [k for k in range(LAYERS) if k not in streamed.removed]
    for new, old in enumerate(kept):
        up = "mlp.up_proj.weight"
        assert torch.equal(written[f"model.layers.{new}.{up}"], source[f"model.layers.{old}.{up}"])
    loaded = T.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert loaded.dtype == torch.bfloat16
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied


def test_per_layer_config_lists_keep_the_kept_layers_entries(tmp_path):
    types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
    config = _config(T.Qwen2Config, layer_types=types, sliding_window=4, use_sliding_window=True)
    src = _save(tmp_path / "src", config)
    streamed = prune_checkpoint_layers(src, tmp_path / "out", n=2, calibration=_batches())
    oracle = _in_memory(src, torch.float32, _batches(), tmp_path / "memory")
    assert streamed.removed == oracle.removed and streamed.scores == oracle.scores
    with open(tmp_path / "out" / "config.json") as f:
        written = json.load(f)
    assert written["layer_types"] == [t for k, t in enumerate(types) if k not in streamed.removed]
    assert written["layer_types"] == oracle.model.config.layer_types
    assert streamed.config_changes == {"num_hidden_layers": LAYERS - 2, "layer_types": written["layer_types"]}
    loaded = T.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
    prompt = _batches()[1]
    with torch.no_grad():
        assert torch.equal(loaded(prompt).logits, oracle.model(prompt).logits)


@pytest.mark.parametrize("n, calibration, fragment", [
    (0, "batches", r"n=0 layers to remove: give an integer in \[1, 4\]"),
    (LAYERS, "batches", r"n=5 layers to remove"),
    (True, "batches", r"n=True layers to remove"),
    (2, None, "scores layers on data: pass calibration="),
    (2, [], "scores layers on data: pass calibration="),
    (2, [torch.zeros(2, 8)], "calibration batch 0 is Tensor of shape \\(2, 8\\) torch.float32"),
    (2, [{"input_ids": torch.zeros(2, 8, dtype=torch.long)}], "give input_ids and an attention_mask"),
])
def test_bad_arguments_are_one_input_error_and_leave_no_output(tmp_path, n, calibration, fragment):
    src = _save(tmp_path / "src", _config())
    with pytest.raises(InputError, match=fragment):
        prune_checkpoint_layers(src, tmp_path / "out", n=n, calibration=_batches() if calibration == "batches"
                                else calibration)
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no output, no staging directory


def test_a_full_filesystem_is_one_error_and_leaves_no_partial_output(tmp_path, monkeypatch):
    src = _save(tmp_path / "src", _config())
    calls = disk_fills_after(monkeypatch, 3)
    with pytest.raises(GraphPruneError, match="No space left on device.*free space there"):
        prune_checkpoint_layers(src, tmp_path / "out", n=1, calibration=_batches())
    assert len(calls) == 4 and sorted(os.listdir(tmp_path)) == ["src"]


def test_the_top_level_package_exports_it():
    assert graphprune.prune_checkpoint_layers is prune_checkpoint_layers


def _cli_source(tmp_path) -> str:
    """A 5-layer checkpoint with a tokenizer in tmp_path/fresh/src, and tmp_path/lines.txt; returns fresh."""
    sys.path.insert(0, os.path.dirname(__file__))
    from test_cli_stream import _lines, save_tokenizer

    save_tokenizer(_save(tmp_path / "fresh" / "src", _config()))
    _lines(tmp_path / "lines.txt")
    return str(tmp_path / "fresh")


def _check_cli_output(fresh, stdout: str) -> None:
    out = stdout.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("wrote ") and "of 5 layers" in out[0], stdout
    assert "num_hidden_layers 3" in out[0]
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(os.path.join(fresh, "pruned")))
    loaded = T.AutoModelForCausalLM.from_pretrained(os.path.join(fresh, "pruned")).eval()
    assert len(loaded.model.layers) == 3 and loaded.config.num_hidden_layers == 3
    prompt = torch.zeros(1, 4, dtype=torch.long)
    with torch.no_grad():
        assert loaded.generate(prompt, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape == (1, 7)
    assert sorted(os.listdir(fresh)) == ["pruned", "src"]  # no staging directory left


def test_the_cli_removes_layers_of_a_checkpoint_directory_in_one_line(tmp_path, capsys, monkeypatch):
    """graphprune prune DIR --stream --layers N, the text through DIR's tokenizer (in process)."""
    from graphprune.cli import main

    fresh = _cli_source(tmp_path)
    monkeypatch.chdir(fresh)
    capsys.readouterr()
    assert main(["prune", "src", "--stream", "--layers", "2", "--text", str(tmp_path / "lines.txt"),
                 "--max-length", "8", "--out", "pruned", "--quiet"]) == 0
    _check_cli_output(fresh, capsys.readouterr().out)


@pytest.mark.slow  # python -m graphprune imports torch and transformers: 9-17 s on 2 shared cores
def test_the_cli_subprocess_removes_layers_of_a_checkpoint_directory(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from cli_support import run_cli

    fresh = _cli_source(tmp_path)
    proc = run_cli("prune", "src", "--stream", "--layers", "2", "--text", tmp_path / "lines.txt", "--max-length",
                   "8", "--out", "pruned", cwd=fresh)
    assert proc.returncode == 0, proc.stderr
    _check_cli_output(fresh, proc.stdout)


@pytest.mark.parametrize("extra, fragment", [
    (["--layers", "2"], "--layers removes decoder layers of a Hugging Face checkpoint directory: add --stream"),
    (["--stream", "--layers", "2", "--ratio", "0.5"], "--ratio prunes channels: drop it, or drop --layers"),
    (["--stream", "--layers", "2", "--importance", "wanda"], "--importance prunes channels"),
    (["--stream", "--layers", "5"], "n=5 layers to remove: give an integer in [1, 4]"),
])
def test_cli_layers_errors_are_one_line(tmp_path, capsys, extra, fragment):
    from graphprune.cli import main

    src = _save(tmp_path / "src", _config())
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["prune", src, "--out", str(tmp_path / "out"), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graphprune: error: ") and fragment in err[0], err
    assert sorted(os.listdir(tmp_path)) == ["src"]
