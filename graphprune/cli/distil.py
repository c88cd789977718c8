"""Recovery from the command line: the images of --images distilled into a pruned model (prune --recover-steps,
graphprune recover)."""
from __future__ import annotations

from dataclasses import replace

import graphprune
from .images import image_batches, parse_floats
from .messages import CLIError, Progress
from .models import LoadedModel


def check_recovery_args(args) -> None:
    """One-line errors for the recovery flags, before any work."""
    if args.steps and not args.images:
        raise CLIError("--recover-steps needs --images DIR: recovery distils on real images")
    if args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if not 0 < args.eval_share < 1:
        raise CLIError(f"--eval-share must be in (0, 1), got {args.eval_share}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")


def recovered(progress: Progress, result, loaded: LoadedModel, args):
    """(result with the recovered model and report, the RecoveryResult), on args.images (flags checked by the
    caller with check_recovery_args, before any work)."""
    shape = tuple(loaded.inputs[0].shape)
    channels = shape[1] if len(shape) > 1 else 1
    with progress.step(f"reading images from {args.images}"):
        batches = image_batches(args.images, shape, args.batch_size, parse_floats(args.mean, channels, "--mean"),
                                parse_floats(args.std, channels, "--std"))
    held = max(1, round(args.eval_share * len(batches))) if len(batches) > 1 else 0
    data, held_out = (batches[:-held], batches[-held:]) if held else (batches, None)
    progress.note(f"recovering on {sum(len(b) for b in data)} images, fidelity measured on "
                  + (f"{sum(len(b) for b in held_out)} held-out images" if held_out else "the same images (too few "
                     "to hold any out)"))
    checkpoints = graphprune.Checkpoints(args.checkpoints, every=args.checkpoint_every, resume=args.resume) \
        if args.checkpoints else graphprune.Checkpoints()
    with progress.step(f"recovering for {args.steps} steps (distilling from the dense model)"):
        rec = graphprune.recover(result, data=data, eval_data=held_out, steps=args.steps, lr=args.lr,
                                 checkpoints=checkpoints, progress=None if not args.quiet else False)
    print(rec.summary())
    return replace(result, model=rec.model, report=rec.report), rec
