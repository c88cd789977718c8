"""Recovery from the command line: the images of --images or the text lines of --text distilled into a pruned
model (prune --recover-steps, graphprune recover)."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

import graphprune
from .images import image_batches, parse_floats
from .messages import CLIError, Progress
from .text import text_batches


def check_data_flags(args, own_tokenizer: str | None = None) -> None:
    """One source of data: --images DIR, or --text FILE with --tokenizer DIR (or the model's `own_tokenizer`)."""
    if args.images and args.text:
        raise CLIError("--images and --text are exclusive: give one source of data")
    if args.text and not (args.tokenizer or own_tokenizer):
        raise CLIError("--text needs --tokenizer DIR, the folder of the model's saved Hugging Face tokenizer (a "
                       "Hugging Face model directory with a tokenizer needs none)")
    if args.tokenizer and not args.text:
        raise CLIError("--tokenizer is read only with --text FILE (one sample a line)")
    if args.text and not os.path.isfile(args.text):
        raise CLIError(f"--text {args.text!r} is not a file; pass a UTF-8 text file with one sample a line")
    if args.max_length is not None and args.max_length < 1:
        raise CLIError(f"--max-length must be >= 1, got {args.max_length}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")


def check_recovery_args(args, own_tokenizer: str | None = None) -> None:
    """One-line errors for the recovery flags, before any work."""
    who = "--recover-steps" if args.command == "prune" else "graphprune recover"
    if args.steps and not (args.images or args.text):
        raise CLIError(f"{who} needs --images DIR or --text FILE: recovery distils on real data")
    check_data_flags(args, own_tokenizer)
    if args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if not 0 < args.eval_share < 1:
        raise CLIError(f"--eval-share must be in (0, 1), got {args.eval_share}")


@dataclass(frozen=True)
class Family:
    """What the model states about its data: its own tokenizer, image mean/std, a batch size it is fixed to."""

    tokenizer: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    batch: int | None = None


@dataclass(frozen=True)
class RecoveryData:
    """The batches of --images or --text, read before any tracing, and what one sample is called."""

    batches: list
    samples: str  # "images" or "lines"


def recovery_data(progress: Progress, args, input_shape: tuple[int, ...], vocab_size: int | None,
                  family: Family = Family()) -> RecoveryData:
    """The batches of args.text (token ids: text.text_batches) or args.images, shaped like the model's input;
    --tokenizer, --mean and --std default to what `family` states."""
    batch = family.batch or args.batch_size
    if args.text:
        with progress.step(f"tokenizing {args.text}"):
            return RecoveryData(text_batches(args.text, args.tokenizer or family.tokenizer, input_shape, vocab_size,
                                             batch, args.max_length), "lines")
    channels = input_shape[1] if len(input_shape) > 1 else 1
    mean = parse_floats(args.mean, channels, "--mean") or _fit(family.mean, channels)
    std = parse_floats(args.std, channels, "--std") or _fit(family.std, channels)
    with progress.step(f"reading images from {args.images}"):
        return RecoveryData(image_batches(args.images, input_shape, batch, mean, std), "images")


def _fit(values: tuple[float, ...] | None, channels: int) -> tuple[float, ...] | None:
    """A family's per-channel statistics for `channels` channels (None when they do not fit: images.py's)."""
    if values is None or len(values) not in (1, channels):
        return None
    return tuple(values) * (channels // len(values))


def recovered(progress: Progress, result, data: RecoveryData, args):
    """(result with the recovered model and report, the RecoveryResult), on `data` (flags checked by the caller
    with check_recovery_args, before any work)."""
    batches, samples = data.batches, data.samples
    held = max(1, round(args.eval_share * len(batches))) if len(batches) > 1 else 0
    data, held_out = (batches[:-held], batches[-held:]) if held else (batches, None)
    progress.note(f"recovering on {sum(len(b) for b in data)} {samples}, fidelity measured on "
                  + (f"{sum(len(b) for b in held_out)} held-out {samples}" if held_out else f"the same {samples} "
                     "(too few to hold any out)"))
    checkpoints = graphprune.Checkpoints(args.checkpoints, every=args.checkpoint_every, resume=args.resume) \
        if args.checkpoints else graphprune.Checkpoints()
    with progress.step(f"recovering for {args.steps} steps (distilling from the dense model)"):
        rec = graphprune.recover(result, data=data, eval_data=held_out, steps=args.steps, lr=args.lr,
                                 checkpoints=checkpoints, progress=None if not args.quiet else False)
    print(rec.summary())
    return replace(result, model=rec.model, report=rec.report), rec


def pruned_module(result) -> torch.nn.Module:
    """The pruned model in the caller's own class: `result.model` when recovery already returned that class there
    (`recovered`), else `result.module`, rebuilt from the graph (EagerRebuildError where it cannot be)."""
    return result.module if isinstance(result.model, torch.fx.GraphModule) else result.model
