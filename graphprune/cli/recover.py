"""graphprune recover RUN_DIR (--images DIR | --text FILE --tokenizer DIR) --out DIR: distil a pruned model on
real data.

RUN_DIR is what `graphprune prune` wrote: its report.json names the model, input shape and vocab size (a model
pruned on token ids, --vocab-size), its plan.json the pruned architecture. The dense model is loaded again, the
plan applied, and the pruned model recovered with graphprune.recover on the images or text lines (the last
--eval-share of the batches held out for the fidelity table); --out gets the same files as prune, with the
recovered weights and report.json's "recovery" entry.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import graphprune
from .distil import Family, check_recovery_args, recovered, recovery_data
from .hf import own_tokenizer
from .sources import Kind, detect
from .messages import CLIError, Progress
from .models import load_model, parse_shape
from .prune import staged_out, read_plan, run_step, write_outputs


@dataclass(frozen=True)
class Run:
    """What a directory written by graphprune prune says about its model."""

    spec: str  # MODEL as prune was given it (a path made absolute)
    shape: str  # --input-shape, as text
    vocab_size: int | None  # --vocab-size: the model takes token ids below it; None: float inputs
    plan: "graphprune.PrunePlan"


def read_run(directory: str) -> Run:
    """The Run of a directory written by graphprune prune (report.json, plan.json)."""
    report_path, plan_path = os.path.join(directory, "report.json"), os.path.join(directory, "plan.json")
    try:
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
        spec, shape = report["model"], ",".join(str(d) for d in report["input_shape"])
        vocab_size = report.get("vocab_size")  # absent in runs written before --vocab-size
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CLIError(f"RUN_DIR {directory!r} has no readable report.json with the model and input shape "
                       f"({type(exc).__name__}); pass a directory written by graphprune prune") from None
    return Run(spec, shape, vocab_size if isinstance(vocab_size, int) else None, read_plan(plan_path))


def cmd_recover(args) -> int:
    progress = Progress(args.quiet)
    run = read_run(args.run)
    check_recovery_args(args, own_tokenizer(run.spec))
    family = Family(tokenizer=own_tokenizer(run.spec))
    data = recovery_data(progress, args, parse_shape(run.shape), run.vocab_size, family)  # bad data: before any work
    with staged_out(args) as out:
        with progress.step(f"loading {run.spec}"):
            loaded = load_model(run.spec, run.shape, None if detect(run.spec) is Kind.HF_DIR else run.vocab_size)
        result = run_step(progress, f"tracing {loaded.name} and applying the plan",
                          lambda: graphprune.apply_plan(loaded.model, loaded.inputs, run.plan))
        result, rec = recovered(progress, result, data, args)
        write_outputs(out, loaded, result, {"recovered_from": os.path.abspath(args.run), "recovery": rec.to_json(),
                                            "verbose": getattr(args, "verbose", False)}, progress)
        written = out.commit()
    print(f"wrote {', '.join(written)} to {args.out}")
    return 0
