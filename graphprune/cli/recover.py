"""graphprune recover RUN_DIR --images DIR --out DIR, and prune's --recover-steps: distil a pruned model on images.

RUN_DIR is what `graphprune prune` wrote: its report.json names the model and input shape, its plan.json
the pruned architecture. The dense model is loaded again, the plan applied, and the pruned model
recovered with graphprune.recover on the images (the last --eval-share of the batches held out for the
fidelity table); --out gets the same files as prune, with the recovered weights and report.json's
"recovery" entry.
"""
from __future__ import annotations

import json
import os

import graphprune
from .distil import check_recovery_args, recovered
from .messages import CLIError, Progress
from .models import load_model
from .prune import staged_out, read_plan, run_step, write_outputs


def read_run(directory: str) -> tuple[str, str, "graphprune.PrunePlan"]:
    """(model spec, input shape text, plan) of a directory written by graphprune prune."""
    report_path, plan_path = os.path.join(directory, "report.json"), os.path.join(directory, "plan.json")
    try:
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
        spec, shape = report["model"], ",".join(str(d) for d in report["input_shape"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"RUN_DIR {directory!r} has no readable report.json with the model and input shape "
                       f"({type(exc).__name__}); pass a directory written by graphprune prune") from None
    return spec, shape, read_plan(plan_path)


def cmd_recover(args) -> int:
    progress = Progress(args.quiet)
    check_recovery_args(args)
    spec, shape, plan = read_run(args.run)
    with staged_out(args) as out:
        with progress.step(f"loading {spec}"):
            loaded = load_model(spec, shape)
        result = run_step(progress, f"tracing {loaded.name} and applying the plan",
                          lambda: graphprune.apply_plan(loaded.model, loaded.inputs, plan))
        result, rec = recovered(progress, result, loaded, args)
        write_outputs(out, loaded, result, {"recovered_from": os.path.abspath(args.run), "recovery": rec.to_json(),
                                            "verbose": getattr(args, "verbose", False)}, progress)
        written = out.commit()
    print(f"wrote {', '.join(written)} to {args.out}")
    return 0
