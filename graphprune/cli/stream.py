"""graphprune prune DIR --stream: prune a Hugging Face checkpoint directory without loading its weights.

DIR holds config.json and safetensors weights (model.safetensors, or shards and their index); the pruned
checkpoint (same shards, new index, pruned config.json, tokenizer and generation files copied) is written to
--out by graphprune.prune_checkpoint, which streams the weights tensor by tensor. --importance l1/l2 reads
weights only; wanda and activation run --calibration-batches batches of --text (tokenized by DIR's tokenizer, or
--tokenizer) one decoder layer at a time, else RANDOM token ids (a poor proxy). One line says what was
written (stdout). Progress on stderr (a terminal, without --quiet): one line per shard scored, decoder layer
calibrated (wanda) and shard written, with the elapsed time and an ETA (checkpoint/progress.py). The flags
that need the model in memory (--target-latency-ms, --recover-steps, --images) are refused.
--layers N instead of a budget removes the N decoder layers of lowest block influence
(graphprune.prune_checkpoint_layers), scored on the same calibration batches as wanda.
"""
from __future__ import annotations

import json
import os

import torch

from ..checkpoint import is_checkpoint_dir, prune_checkpoint, prune_checkpoint_layers
from .budget import read_budget
from .distil import check_data_flags
from .hf import own_tokenizer
from .messages import CLIError, Progress
from .text import text_batches

STREAMED = ("l1", "l2", "wanda", "activation")
DATA_DRIVEN = ("wanda", "activation")  # scored on calibration batches run layer by layer
DEFAULT_LENGTH = 128  # tokens per calibration sequence when --max-length is not given


def _check(args) -> None:
    """One-line errors for what --stream cannot do, before any work."""
    if not is_checkpoint_dir(args.model):
        raise CLIError(f"--stream reads a Hugging Face checkpoint directory (config.json and model.safetensors or "
                       f"model.safetensors.index.json); {args.model!r} is not one: drop --stream or pass the folder "
                       "save_pretrained wrote")
    if args.importance not in STREAMED:
        raise CLIError(f"--stream scores with --importance {', '.join(STREAMED)}; {args.importance} needs the model in "
                       "memory: drop --stream")
    for flag, given in (("--target-latency-ms", args.target_latency_ms), ("--recover-steps", args.steps),
                        ("--images", args.images)):
        if given:
            raise CLIError(f"{flag} needs the model in memory; drop it or drop --stream")
    if args.layers is not None:
        _check_layers(args)
    elif args.text and args.importance not in DATA_DRIVEN:
        raise CLIError(f"--text feeds --importance wanda/activation or --layers; with --importance {args.importance} nothing "
                       "would read it")
    check_data_flags(args, own_tokenizer(args.model))
    if args.calibration_batches < 1:
        raise CLIError(f"--calibration-batches must be >= 1, got {args.calibration_batches}")


def _check_layers(args) -> None:
    """--layers N is depth pruning's whole budget and criterion: width flags are refused."""
    given = [flag for flag, v in (("--ratio", args.ratio), ("--target-params", args.target_params),
                                  ("--target-macs", args.target_macs), ("--ignore", args.ignore)) if v is not None]
    if given or args.importance != "l2":
        raise CLIError(f"--layers N removes whole layers, scored by block influence; {(given or ['--importance'])[0]} "
                       "prunes channels: drop it, or drop --layers")


def _vocab_size(directory: str) -> int:
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    vocab = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    if not isinstance(vocab, int):
        raise CLIError(f"{directory!r}/config.json states no vocab_size; calibration feeds token ids")
    return vocab


def calibration(args, progress: Progress) -> list[torch.Tensor] | None:
    """Token-id batches for wanda, activation or --layers: --calibration-batches batches of --text, else of random ids."""
    if args.importance not in DATA_DRIVEN and args.layers is None:
        return None
    vocab, length = _vocab_size(args.model), args.max_length or DEFAULT_LENGTH
    if args.text:
        batches = text_batches(args.text, args.tokenizer or args.model, (1, length), vocab, args.batch_size, length)
        batches = batches[:args.calibration_batches]
        source = args.text
    else:
        g = torch.Generator().manual_seed(100)
        batches = [torch.randint(0, vocab, (args.batch_size, length), generator=g)
                   for _ in range(args.calibration_batches)]
        source = "RANDOM token ids"
    scored = "--layers scores decoder layers" if args.layers is not None else f"--importance {args.importance} scores channels"
    progress.note(f"{scored} on {len(batches)} batches of {source} ({length} tokens)")
    return batches


def _prune_layers(args) -> int:
    progress = Progress(args.quiet)
    batches = calibration(args, progress)
    with progress.step(f"removing {args.layers} decoder layers of {args.model}, streaming its shards"):
        result = prune_checkpoint_layers(args.model, args.out, n=args.layers, calibration=batches, force=args.force)
    count = len(result.scores)
    print(f"wrote {len(result.files)} files ({result.bytes_written / 2**30:.2f} GiB of tensors) to {args.out}: "
          f"removed {result.layers} {', '.join(map(str, result.removed))} of {count} layers, params "
          f"{result.params_before:,} -> {result.params_after:,} ({1 - result.params_after / result.params_before:.1%} "
          f"removed); config: num_hidden_layers {count - len(result.removed)}")
    return 0


def cmd_prune_stream(args) -> int:
    _check(args)
    if args.layers is not None:
        return _prune_layers(args)
    budget = read_budget(args)
    progress = Progress(args.quiet)
    batches = calibration(args, progress)
    ignore = [name.strip() for entry in args.ignore or [] for name in entry.split(",") if name.strip()]
    progress.note(f"pruning {args.model} {budget.describe()} ({args.importance}), streaming its shards")
    result = prune_checkpoint(args.model, args.out, **budget.keywords(), importance=args.importance, scope=args.scope,
                              ignore=ignore, round_to=args.round_to, target=args.target, force=args.force,
                              calibration=batches, progress=lambda event: progress.note(event.line()))
    report = result.report
    changes = ", ".join(f"{k} {v}" for k, v in result.config_changes.items() if isinstance(v, int)) or "none"
    print(f"wrote {len(result.files)} files ({result.bytes_written / 2**30:.2f} GiB of tensors) to {args.out}: "
          f"params {report.params_before:,} -> {report.params_after:,} "
          f"({1 - report.params_after / report.params_before:.1%} removed); config: {changes}")
    return 0
