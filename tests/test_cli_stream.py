"""graphprune prune DIR --stream: a Hugging Face checkpoint directory pruned into a checkpoint, run as a user runs it."""
import json
import os

import pytest
import torch

from cli_support import assert_one_line_error, run_cli
from graphprune.cli import main
from graphprune.cli.messages import Progress
from graphprune.cli.parsing import build_parser
from graphprune.cli.stream import calibration

T = pytest.importorskip("transformers")
WORDS = "the a cat dog sat ran on under mat log red blue".split()


def _save(directory, shard: str | None = None, tokenizer: bool = False) -> None:
    config = T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, use_cache=False)
    torch.manual_seed(0)
    T.LlamaForCausalLM(config).eval().save_pretrained(str(directory), **({"max_shard_size": shard} if shard else {}))
    if tokenizer:
        save_tokenizer(directory)


def save_tokenizer(directory) -> None:
    """A word-level tokenizer of WORDS (pad id 0) saved into `directory`."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}},
                                     unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(
        str(directory))


def _lines(path) -> str:
    path.write_text("\n".join(" ".join(WORDS[(5 * i + 3 * j) % len(WORDS)] for j in range(2 + i % 5))
                              for i in range(12)) + "\n")
    return str(path)


@pytest.mark.parametrize("importance", ["wanda", "activation"])
def test_calibration_is_the_text_through_the_directorys_tokenizer(tmp_path, importance):
    _save(tmp_path / "src", tokenizer=True)
    args = build_parser().parse_args(["prune", str(tmp_path / "src"), "--stream", "--ratio", "0.5", "--out", "o",
                                      "--importance", importance, "--text", _lines(tmp_path / "lines.txt"),
                                      "--max-length", "6", "--batch-size", "4", "--calibration-batches", "2"])
    batches = calibration(args, Progress(quiet=True))
    tokenizer = T.AutoTokenizer.from_pretrained(str(tmp_path / "src"))
    lines = (tmp_path / "lines.txt").read_text().splitlines()
    expected = tokenizer(lines, padding="max_length", truncation=True, max_length=6, return_tensors="pt")["input_ids"]
    assert len(batches) == 2 and all(b.shape == (4, 6) for b in batches)
    assert torch.equal(torch.cat(batches), expected[:8])
    args.text = None
    random = calibration(args, Progress(quiet=True))
    assert len(random) == 2 and random[0].shape == (4, 6) and int(random[0].max()) < 64


@pytest.mark.slow  # the subprocess exports the model twice (analysis, config check): 25-50 s on 2 shared cores
def test_prune_stream_writes_a_smaller_checkpoint_and_one_line(tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _save(fresh / "src", tokenizer=True)
    lines = _lines(tmp_path / "lines.txt")
    proc = run_cli("prune", "src", "--stream", "--ratio", "0.5", "--target", "none", "--out", "pruned",
                   "--importance", "wanda", "--text", lines, "--max-length", "8", cwd=fresh)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("wrote ") and "pruned" in out[0], proc.stdout
    with open(fresh / "pruned" / "config.json") as f:
        config = json.load(f)
    assert config["intermediate_size"] < 64
    assert f"intermediate_size {config['intermediate_size']}" in out[0]
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(fresh / "pruned"))
    loaded = T.AutoModelForCausalLM.from_pretrained(str(fresh / "pruned"), dtype=torch.bfloat16).eval()
    assert loaded.model.layers[0].mlp.up_proj.weight.shape == (config["intermediate_size"], config["hidden_size"])
    prompt = torch.zeros(1, 4, dtype=torch.long)
    with torch.no_grad():
        assert loaded(prompt).logits.shape == (1, 4, 64)
        assert loaded.generate(prompt, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape == (1, 7)
    assert sorted(os.listdir(fresh)) == ["pruned", "src"]  # no staging directory left


def test_a_missing_shard_is_one_line_and_leaves_no_output(tmp_path):
    _save(tmp_path / "src", shard="20KB")
    shards = sorted(n for n in os.listdir(tmp_path / "src") if n.endswith(".safetensors"))
    assert len(shards) > 1
    os.remove(tmp_path / "src" / shards[1])
    proc = run_cli("prune", tmp_path / "src", "--stream", "--ratio", "0.5", "--out", tmp_path / "out")
    assert_one_line_error(proc, f"shard {shards[1]!r} named by model.safetensors.index.json is missing")
    assert sorted(os.listdir(tmp_path)) == ["src"]


@pytest.mark.parametrize("extra, fragment", [
    (["--importance", "taylor"], "needs the model in memory: drop --stream"),
    (["--recover-steps", "5", "--text", __file__], "--recover-steps needs the model in memory"),
    (["--target-latency-ms", "2"], "--target-latency-ms needs the model in memory"),
    (["--text", __file__], "--text feeds --importance wanda/activation"),
    (["--importance", "wanda", "--calibration-batches", "0"], "--calibration-batches must be >= 1"),
])
def test_stream_refuses_what_it_cannot_do_in_one_line(tmp_path, capsys, extra, fragment):
    _save(tmp_path / "src")
    capsys.readouterr()  # save_pretrained's progress bar
    assert main(["prune", str(tmp_path / "src"), "--stream", "--ratio", "0.5", "--out", str(tmp_path / "out"),
                 *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graphprune: error: ") and fragment in err[0], err
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_stream_needs_a_checkpoint_directory(tmp_path, capsys):
    assert main(["prune", str(tmp_path), "--stream", "--ratio", "0.5", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not one: drop --stream" in err[0], err
    assert os.listdir(tmp_path) == []
