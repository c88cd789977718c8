"""A Hugging Face model directory as MODEL: config.json + weights, an optional tokenizer, local files only.

The class is the one the config's `architectures` names (e.g. LlamaForCausalLM: the causal-LM head is kept),
else AutoModel; weights are loaded in float32. The example input is the model's main input: token ids
(batch, length) for `input_ids` models, from the directory's tokenizer on the first line of --text when both
are given, else uniform random ids below config.vocab_size (length --max-length, else 16); pixel_values
(1, num_channels, image_size, image_size) for image models, normalised as preprocessor_config.json states.
The pruned model is written with save_pretrained (and the tokenizer beside it) when its config can state
the pruned sizes (eager.py decides: one uniform config reloads exactly these shapes), else model.pt2 alone.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

import torch

from ..errors import GraphPruneError, first_line
from .distil import pruned_module
from .messages import CLIError, one_line

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model",
                   "spiece.model")
DEFAULT_TOKENS = 16
SAVED_DIR = "hf"  # the save_pretrained folder inside --out


@dataclass(frozen=True)
class HFModel:
    model: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    vocab_size: int | None  # the model takes token ids below this; None: pixel values
    tokenizer: str | None  # the directory, when it holds a tokenizer
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def has_tokenizer(directory: str) -> bool:
    return any(os.path.isfile(os.path.join(directory, f)) for f in TOKENIZER_FILES)


def _model_class(config):
    """The transformers class `architectures` names (its head kept), else AutoModel."""
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return transformers.AutoModel


def _load(directory: str) -> torch.nn.Module:
    try:
        import transformers
    except ImportError:
        raise CLIError(f"MODEL {directory!r} is a Hugging Face model directory; reading it needs transformers: "
                       "pip install transformers") from None
    if not any(os.path.isfile(os.path.join(directory, w)) for w in WEIGHTS):
        raise CLIError(f"MODEL {directory!r} has config.json but no weights ({', '.join(WEIGHTS)}); pass the folder "
                       "model.save_pretrained wrote")
    transformers.utils.logging.disable_progress_bar()  # the command's own progress lines say what is loading
    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
        cls = _model_class(config)
        model = cls.from_pretrained(directory, config=config, local_files_only=True, dtype=torch.float32)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError ... for a folder it cannot read
        raise CLIError(f"MODEL {directory!r} holds no model transformers can load ({type(exc).__name__}: "
                       f"{first_line(exc)}); pass the folder model.save_pretrained wrote") from None
    return model.eval()


def _token_ids(directory: str, model, shape, text: str | None, max_length: int | None, tokenizer: str | None):
    from .text import text_batches

    vocab = int(model.config.vocab_size)
    if shape is not None and len(shape) != 2:
        raise CLIError(f"--input-shape {','.join(map(str, shape))}: {os.path.basename(directory)} takes token ids "
                       "of shape (batch, length), e.g. --input-shape 1,16")
    length = max_length or (shape[1] if shape else DEFAULT_TOKENS)
    if text and tokenizer:
        return text_batches(text, tokenizer, (1, length), vocab, 1, length)[0], vocab
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (shape[0] if shape else 1, length), generator=g), vocab


def _pixels(directory: str, model, shape):
    config = model.config
    size = getattr(config, "image_size", None)
    size = (size, size) if isinstance(size, int) else tuple(size or ())
    channels = getattr(config, "num_channels", 3)
    if shape is None and len(size) != 2:
        raise CLIError(f"the config of {directory!r} states no image_size; pass --input-shape 1,C,H,W")
    shape = shape or (1, channels, *size)
    mean = std = None
    path = os.path.join(directory, "preprocessor_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            pre = json.load(f)
        mean, std = pre.get("image_mean"), pre.get("image_std")
    g = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=g), (tuple(mean) if mean else None), (tuple(std) if std else None)


def load_hf(directory: str, shape, text: str | None = None, max_length: int | None = None) -> HFModel:
    """The directory's model and example input (module docstring)."""
    model = _load(directory)
    tokenizer = directory if has_tokenizer(directory) else None
    main = getattr(model, "main_input_name", "input_ids")
    if main == "input_ids":
        ids, vocab = _token_ids(directory, model, shape, text, max_length, tokenizer)
        return HFModel(model, (ids,), vocab, tokenizer)
    if main == "pixel_values":
        x, mean, std = _pixels(directory, model, shape)
        return HFModel(model, (x,), None, tokenizer, mean, std)
    raise CLIError(f"MODEL {directory!r}: {type(model).__name__} takes {main}; the command line feeds input_ids "
                   "(text models) or pixel_values (image models) only; use the Python API for this model")


def save_pruned(result, directory: str, tokenizer: str | None) -> dict:
    """save_pretrained of the pruned model (and the tokenizer) into `directory`: {"format", "line"}, the line saying
    what was written. When the config cannot state the pruned sizes nothing is written there and the line says why."""
    try:
        module = pruned_module(result)
        module.save_pretrained(directory)
    except GraphPruneError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        return {"format": "pt2", "line": f"pruned model: model.pt2 only (save_pretrained unavailable: {one_line(exc)})"}
    if tokenizer:
        from .text import load_tokenizer

        load_tokenizer(tokenizer, "MODEL").save_pretrained(directory)
    return {"format": "save_pretrained", "directory": SAVED_DIR, "class": type(module).__name__,
            "line": f"pruned model: save_pretrained in {SAVED_DIR}/ (reload with {type(module).__name__}"
                    ".from_pretrained), and model.pt2"}


def own_tokenizer(spec: str) -> str | None:
    """MODEL's own tokenizer: a Hugging Face model directory that holds one."""
    return spec if os.path.isdir(spec) and has_tokenizer(spec) else None
