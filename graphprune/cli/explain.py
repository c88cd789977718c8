"""graphprune explain: the channel groups of a model, the modules in them and why any are frozen."""
from __future__ import annotations

import graphprune
from ..models import ZOO
from ..rules.conv import GroupedConv
from ..runtimes.profiles import resolve_target
from .messages import CLIError, Progress
from .models import load_model
from .prune import run_step


def cmd_explain(args) -> int:
    if args.list:
        for name, spec in sorted(ZOO.items()):
            print(f"{name:22s} input {'x'.join(map(str, spec.input_shape))}")
        return 0
    if not args.model:
        raise CLIError("explain needs MODEL (or --list)")
    progress = Progress(args.quiet)
    with progress.step(f"loading {args.model}"):
        loaded = load_model(args.model, args.input_shape)
    target = resolve_target(args.target, args.round_to)  # grouped convolutions are grouped as prune groups them
    analysis = run_step(progress, f"tracing and analysing {loaded.name}",
                        lambda: graphprune.analyse(loaded.model, loaded.inputs, grouped_convs=target.grouped_convs))
    print(analysis.explain())
    grouped = "by whole groups" if target.grouped_convs is GroupedConv.WHOLE else "within groups"
    print(f"target {target.name}: grouped convolutions are pruned {grouped}, as graphprune prune does")
    print("names are module names: `--ignore NAME` keeps the channels of every group that NAME "
          "(or a module inside it) writes")
    return 0
