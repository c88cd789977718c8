"""prune_checkpoint: prune a Hugging Face checkpoint directory without loading its weights.

    config.json -> the model class on the meta device -> analyse (shapes only: the ordinary analysis)
    [wanda, activation: the calibration batches run one decoder layer at a time (layerwise.py): Linear input
     statistics]
    shards      -> StreamedMagnitude / StreamedWanda scores (each tensor read once) -> plan (the planner as is)
    meta graph  -> apply the plan to the meta graph: the final plan (a group whose rewrite breaks is frozen, as
                   in memory), every tensor's pruned shape, and the config that builds that graph
    shards      -> pruned shards (same files, same keys, same dtype), index, config, tokenizer files, committed
                   in one rename (the output directory appears complete or not at all)
The plan and the tensors equal prune_graph's on the same model in memory with the same criterion (and for
wanda or activation the same calibration batches).
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from ..analysis import analyse
from ..atomic import StagedDirectory
from ..errors import GraphPruneError, InputError
from ..importance import Criterion
from ..options import Budget, Options
from ..passes.shrink import positions_kept_by_slot
from ..planner import PrunePlan
from ..report import PruneReport
from ..rules import RuleTable
from .model import alias_names, build_meta, checkpoint_keys, example_inputs, open_model, pruned_config
from .layerwise import LayerwiseRun, calibration_ids, mean_magnitudes, square_sums
from .progress import Callback, Tracker
from .scores import StreamedActivation, StreamedMagnitude, StreamedWanda
from .source import Checkpoint
from .write import copy_side_files, write_index, write_shards

MAGNITUDE = {"l1": 1, "l2": 2}
LAYERWISE = {"wanda": square_sums, "activation": mean_magnitudes}  # criterion -> the Linear input statistic


@dataclass(frozen=True)
class CheckpointResult:
    path: str  # the written checkpoint directory
    plan: PrunePlan
    report: PruneReport  # params and MACs of the meta graph before and after (shapes only)
    config_changes: Mapping[str, object]  # config field -> its new value
    files: tuple[str, ...]  # what the directory holds
    bytes_written: int  # tensor data in the new shards
    timings: Mapping[str, float] = field(default_factory=dict)


def cuts_of(result, keys: Mapping[str, str]) -> dict[str, list]:
    """checkpoint key -> [(dim, kept positions)] of every parameter slot the plan shrinks (once per key and dim)."""
    cuts: dict[str, list] = {}
    for slot, positions in sorted(positions_kept_by_slot(result.graph, result.plan).items()):
        key = keys.get(slot.name)
        if not slot.is_param or key is None or any(d == slot.dim for d, _ in cuts.get(key, ())):
            continue  # not stored (a non-persistent buffer), or a tied dim already cut
        cuts.setdefault(key, []).append((slot.dim, positions))
    return cuts


def expected_shapes(checkpoint: Checkpoint, result, aliases: Mapping[str, str]) -> dict[str, tuple]:
    """checkpoint key -> its shape in the pruned graph (unchanged when the graph does not hold it)."""
    gm = result.model
    pruned = {aliases.get(n, n): tuple(t.shape) for n, t in [*gm.named_parameters(remove_duplicate=False),
                                                            *gm.named_buffers(remove_duplicate=False)]}
    return {k: pruned.get(aliases.get(k, k), shape) for k, shape in checkpoint.shapes.items()}


def _criterion(importance, checkpoint: Checkpoint, keys, aliases, build, calibration, progress: Tracker) -> Criterion:
    """The streamed criterion for `importance`; wanda and activation first run the calibration batches layer by
    layer (Taylor needs gradients through the whole model: not streamed)."""
    if importance in MAGNITUDE:
        if calibration is not None:
            raise InputError(f"importance={importance!r} reads weights only; calibration= is for the data-driven "
                             f"criteria {sorted(LAYERWISE)}")
        return StreamedMagnitude(checkpoint, keys, MAGNITUDE[importance], progress)
    if importance not in LAYERWISE:
        raise InputError(f"prune_checkpoint streams {sorted(MAGNITUDE) + sorted(LAYERWISE)}, got {importance!r}; "
                         "other criteria (taylor: gradients through the whole model) need it in memory: use prune_graph")
    batches = calibration_ids(calibration if calibration is not None else ())
    run = LayerwiseRun(build().float(), checkpoint, keys, progress, statistic=LAYERWISE[importance])
    calls = run.input_statistics(batches).calls
    if importance == "activation":
        return StreamedActivation(checkpoint, keys, {f"{name}.weight": c for name, c in calls.items()}, aliases,
                                  progress)
    norms = {f"{name}.weight": total.sqrt() for name, total in run.inputs.sums().items()}
    return StreamedWanda(checkpoint, keys, norms, aliases, progress)


@contextmanager
def filesystem_errors(staged: StagedDirectory):
    """A full or failing filesystem while writing into `staged` is one GraphPruneError naming the destination (the
    staging directory is then removed, `out` never appears)."""
    try:
        yield
    except OSError as exc:
        raise GraphPruneError(f"cannot write the pruned checkpoint for {staged.path!r} (staged in "
                              f"{os.path.dirname(staged.staging)!r}): {exc.strerror or exc}; free space there or pass "
                              "an out directory on another filesystem") from exc


def _write(checkpoint: Checkpoint, staged: StagedDirectory, result, keys, aliases, new_config,
           progress: Tracker) -> int:
    """Shards, index, config and side files into the staging directory; returns the tensor bytes written
    (filesystem_errors)."""
    with filesystem_errors(staged):
        written = write_shards(checkpoint, staged, cuts_of(result, keys), expected_shapes(checkpoint, result, aliases),
                               progress)
        write_index(checkpoint, staged, written)
        new_config.save_pretrained(staged.staging)
        copy_side_files(checkpoint, staged)
    return written


def prune_checkpoint(src: str | os.PathLike, out: str | os.PathLike, *, ratio: float | None = None,
                     target_params: int | None = None, target_macs: int | None = None, importance: str = "l2",
                     scope: str = "local", min_keep: float = 0.1, ratios: Mapping[str, float] | None = None,
                     round_to: int | None = None, target="auto", uniform_layers: bool = False, gqa: str | None = None,
                     ignore: Iterable[str] = (), rules: RuleTable | None = None, force: bool = False,
                     calibration: Iterable | None = None, progress: Callback | None = None) -> CheckpointResult:
    """Prune the checkpoint directory `src` (config.json + safetensors) into `out`, streaming its weights.

    Keywords as prune_graph's (`ignore`: module names); `importance` "l1", "l2", "wanda" or
    "activation" (with `calibration`: token-id batches, run one decoder layer at a time: layerwise.py). `out` must not exist or
    be empty (`force=True` replaces it whole). Shards keep their names, keys and dtype; tied weights stay tied.
    `progress`: called with a ProgressEvent (progress.py) per shard scored or written and per layer calibrated;
    if it raises, the run stops and nothing is written."""
    t0 = time.perf_counter()
    budget = Budget.from_keywords(ratio, target_params, target_macs, None)
    with StagedDirectory(out, replace=force, flag="out") as staged:  # before any work: an unwritable out fails first
        checkpoint, config, cls, meta = open_model(src)
        aliases = alias_names(meta)
        keys = checkpoint_keys(aliases, checkpoint)
        t_open = time.perf_counter()
        tracker = Tracker(progress)
        criterion = _criterion(importance, checkpoint, keys, aliases, lambda: build_meta(cls, config), calibration,
                               tracker)
        t_calibrated = time.perf_counter()
        options = Options.from_keywords(importance=criterion, scope=scope, min_keep=min_keep, ratios=ratios,
                                        round_to=round_to, target=target, ignore=ignore, uniform_layers=uniform_layers)
        analysis = analyse(meta, example_inputs(config), frontend="export", gqa=gqa, rules=rules)
        t1 = time.perf_counter()
        result = options.prune(analysis, budget)
        new_config = pruned_config(cls, config, meta, result.model)
        t2 = time.perf_counter()
        written = _write(checkpoint, staged, result, keys, aliases, new_config, tracker)
        files = staged.commit()
    changes = {k: v for k, v in new_config.to_dict().items() if config.to_dict().get(k) != v}
    timings = {"open": t_open - t0, "calibration": t_calibrated - t_open, "analysis": t1 - t_calibrated, "plan": t2 - t1,
               "write": time.perf_counter() - t2}
    return CheckpointResult(os.path.abspath(os.fspath(out)), result.plan, result.report, changes, tuple(files),
                            written, timings)
