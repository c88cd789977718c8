"""--text FILE --tokenizer DIR: a text file, one sample a line, as batches of token ids for the model's input.

Every non-empty line (surrounding white space stripped) is tokenized by the Hugging Face tokenizer saved in
DIR (transformers' AutoTokenizer, local files only), padded with its pad token and truncated to
--max-length tokens (default: the length of the run's input shape, the length the pruned graph was traced
at). A batch is an int64 tensor (batch size, length) of token ids, the model's one input: the graph the
command line prunes takes the token ids only (it is traced on one input), so there is no attention mask,
and the teacher and the student see the same padded rows. Only a model that takes token ids (pruned with
--vocab-size N, input shape (batch, length)) can read them; every id must be below N.
"""
from __future__ import annotations

import os

import torch

from ..errors import first_line
from .messages import CLIError


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read --text {path!r} ({getattr(exc, 'strerror', None) or first_line(exc)}); pass a "
                       "UTF-8 text file with one sample a line") from None
    lines = [line for line in lines if line]
    if not lines:
        raise CLIError(f"--text {path!r} has no non-empty line; pass a text file with one sample a line")
    return lines


def load_tokenizer(directory: str, flag: str = "--tokenizer"):
    """The Hugging Face tokenizer saved in `directory` (local files only), padding with its pad (or end) token."""
    if not os.path.isdir(directory):
        raise CLIError(f"{flag} {directory!r} is not a directory; pass a folder with a saved Hugging Face "
                       "tokenizer (tokenizer.json or vocab files, as save_pretrained writes them)")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise CLIError(f"--text needs transformers to read the tokenizer of {flag}; pip install transformers") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError ... for a folder it cannot read
        raise CLIError(f"{flag} {directory!r} holds no tokenizer transformers can load ({type(exc).__name__}: "
                       f"{first_line(exc)}); pass the folder tokenizer.save_pretrained wrote") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CLIError(f"the tokenizer in {directory!r} has neither a pad nor an end-of-sequence token to pad "
                           "lines with; give it a pad token (tokenizer.pad_token = ...) and save it again")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _check_token_input(input_shape: tuple[int, ...], vocab_size: int | None) -> None:
    """A CLIError unless the model takes token ids of shape (batch, length) (module docstring)."""
    if vocab_size is None:
        raise CLIError(f"--text gives token ids, but this model was pruned on random float inputs of shape "
                       f"{input_shape}; prune a model that takes token ids with --vocab-size N (and --input-shape "
                       "1,LENGTH) first")
    if len(input_shape) != 2:
        raise CLIError(f"--text gives token ids of shape (batch, length); the model's input shape is {input_shape}")


def text_batches(path: str, tokenizer_dir: str, input_shape: tuple[int, ...], vocab_size: int | None,
                 batch_size: int, max_length: int | None = None) -> list[torch.Tensor]:
    """The file's lines as token-id tensors (batch_size, length) (the last batch may be smaller)."""
    _check_token_input(input_shape, vocab_size)
    length = max_length or input_shape[1]
    lines = _lines(path)
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = tokenizer(lines, padding="max_length", truncation=True, max_length=length, return_tensors="pt")["input_ids"]
    if int(ids.max()) >= vocab_size:
        raise CLIError(f"the tokenizer in {tokenizer_dir!r} gives token id {int(ids.max())}, but the model takes ids "
                       f"below {vocab_size} (--vocab-size of the run); use the model's own tokenizer")
    return list(ids.to(torch.long).split(batch_size))
