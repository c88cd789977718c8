"""prune_checkpoint_layers: depth pruning of a Hugging Face checkpoint directory without loading its weights.

    config.json -> the model class on the meta device; its decoder stack (the list depth.prune_layers prunes)
    shards      -> block influence per layer (depth.InfluenceSums: 1 - mean cos(h_in, h_out) over calibration
                   tokens), the calibration batches run one decoder layer at a time (layerwise.LayerwiseRun)
                -> the n lowest-scoring layers removed (depth.lowest, as prune_layers chooses)
    shards      -> the same shard files without the removed layers' tensors, the kept layers' keys renumbered
                   (model.layers.7.* -> model.layers.5.*), bytes copied unchanged (dtype kept); a shard left
                   with no tensor is not written; a new index; config.json with num_hidden_layers and the
                   per-layer lists (depth.PER_LAYER_CONFIG) shortened; tokenizer and generation files copied;
                   committed in one rename (the output directory appears complete or not at all)
The removed layers and the written tensors equal depth.prune_layers' on the model loaded in the computing
dtype (float64 for a float64 checkpoint, else float32) with the same calibration batches, then save_pretrained.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

from ..atomic import StagedDirectory
from ..depth import InfluenceSums, check_layer_count, find_layer_list, lowest, shorten_config
from ..errors import InputError
from .layerwise import LayerwiseRun, calibration_ids
from .model import alias_names, checkpoint_keys, open_model
from .prune import filesystem_errors
from .source import Checkpoint
from .write import copy_side_files, write_index, write_shards


@dataclass(frozen=True)
class CheckpointDepthResult:
    path: str  # the written checkpoint directory
    layers: str  # qualified name of the decoder stack
    removed: tuple[int, ...]  # original indices of the removed layers
    scores: tuple[float, ...]  # block influence of every original layer (higher = more important)
    config_changes: Mapping[str, object]  # config field -> its new value
    files: tuple[str, ...]  # what the directory holds
    params_before: int  # elements of the checkpoint's tensors
    params_after: int
    bytes_written: int  # tensor data in the new shards
    timings: Mapping[str, float] = field(default_factory=dict)


def calibration_batches(calibration: Iterable | None) -> list:
    """The batches LayerwiseRun runs: token ids (batch, tokens) (a tensor, or a tuple starting with one), or a
    mapping {"input_ids": ids, "attention_mask": mask of the ids' shape} (padding left out of the scores)."""
    given = list(calibration) if calibration is not None else []
    if not given:
        raise InputError("prune_checkpoint_layers scores layers on data: pass calibration=[token ids (batch, tokens), "
                         "...] (or dicts with input_ids and attention_mask)")
    ids = calibration_ids(b.get("input_ids") if isinstance(b, Mapping) else b for b in given)
    batches = []
    for k, (batch, tokens) in enumerate(zip(given, ids)):
        if not isinstance(batch, Mapping):
            batches.append(tokens)
            continue
        mask = batch.get("attention_mask")
        if set(batch) - {"input_ids", "attention_mask"} or not (
                isinstance(mask, torch.Tensor) and mask.shape == tokens.shape):
            raise InputError(f"calibration batch {k} is a mapping with keys {sorted(batch)}; give input_ids and an "
                             f"attention_mask of the same shape {tuple(tokens.shape)}, nothing else")
        batches.append({"input_ids": tokens, "attention_mask": mask})
    return batches


def computing_dtype(checkpoint: Checkpoint) -> torch.dtype:
    """float64 when the checkpoint stores float64 tensors, else float32 (half types are cast up on the CPU)."""
    return torch.float64 if any(e.dtype == torch.float64 for e in checkpoint.entries.values()) else torch.float32


def block_influence(run: LayerwiseRun, batches: list):
    """Per decoder layer of `run`, 1 - mean cos(h_in, h_out) over the batches' tokens (numpy, float64)."""
    sums = InfluenceSums(len(run.layers))
    run.observe_layers(batches, lambda layer, b, h_in, h_out: sums.add(layer, batches[b], h_in, h_out))
    return sums.scores()


def renumbered_keys(keys: Iterable[str], stack: str, count: int, removed: set[int]) -> dict[str, str]:
    """Old checkpoint key -> new key: a kept layer's keys take its new index, a removed layer's are left out,
    keys outside the stack stay."""
    new_index = {old: new for new, old in enumerate(k for k in range(count) if k not in removed)}
    prefix, names = f"{stack}.", {}
    for key in keys:
        index, dot, tail = key[len(prefix):].partition(".") if key.startswith(prefix) else ("", "", "")
        if not (dot and index.isdigit() and int(index) < count):
            names[key] = key
        elif int(index) not in removed:
            names[key] = f"{prefix}{new_index[int(index)]}.{tail}"
    return names


def renamed(checkpoint: Checkpoint, names: Mapping[str, str]) -> Checkpoint:
    """A view of `checkpoint` holding only the keys of `names`, under their new names, at the same bytes of
    the same files; shards left empty are dropped, and the index (when sharded) maps the new keys."""
    shard_of = {names[k]: s for k, s in checkpoint.shard_of.items() if k in names}
    shards = tuple(s for s in checkpoint.shards if s in set(shard_of.values()))
    index = None if checkpoint.index is None else {**checkpoint.index, "weight_map": dict(sorted(shard_of.items()))}
    return dataclasses.replace(checkpoint, shards=shards, shard_of=shard_of, index=index,
                               entries={names[k]: e for k, e in checkpoint.entries.items() if k in names},
                               metadata={s: checkpoint.metadata[s] for s in shards})


def _elements(checkpoint: Checkpoint) -> int:
    return sum(math.prod(e.shape) for e in checkpoint.entries.values())


def _write(kept: Checkpoint, staged: StagedDirectory, config) -> int:
    """The kept tensors' shards, their index, the shortened config and the side files; returns tensor bytes."""
    with filesystem_errors(staged):
        written = write_shards(kept, staged, {}, kept.shapes)
        write_index(kept, staged, written)
        config.save_pretrained(staged.staging)
        copy_side_files(kept, staged)
    return written


def _stack(meta: torch.nn.Module, run: LayerwiseRun) -> str:
    """The decoder stack, checked to be the list depth.prune_layers would prune on the model in memory."""
    name, _ = find_layer_list(meta)
    if name != run.stack_name:
        raise InputError(f"{type(meta).__name__} runs its layers in {run.stack_name!r} but its largest layer list is "
                         f"{name!r}; load the model and use graphprune.depth.prune_layers(model, layers=...)")
    return name


def prune_checkpoint_layers(src: str | os.PathLike, out: str | os.PathLike, *, n: int, calibration: Iterable,
                            force: bool = False) -> CheckpointDepthResult:
    """Remove the `n` decoder layers of lowest block influence from the checkpoint directory `src` into `out`
    (module docstring), streaming its weights. `out` must not exist or be empty (`force=True` replaces it)."""
    t0 = time.perf_counter()
    with StagedDirectory(out, replace=force, flag="out") as staged:  # before any work: an unwritable out fails first
        checkpoint, config, _, meta = open_model(src)
        run = LayerwiseRun(meta.to(computing_dtype(checkpoint)), checkpoint, checkpoint_keys(alias_names(meta),
                                                                                               checkpoint))
        stack, count = _stack(meta, run), len(run.layers)
        check_layer_count(n, stack, count)
        batches = calibration_batches(calibration)
        t_open = time.perf_counter()
        scores = block_influence(run, batches)
        removed = lowest(scores, n)
        t_scored = time.perf_counter()
        kept = renamed(checkpoint, renumbered_keys(checkpoint.entries, stack, count, removed))
        new_config = copy.deepcopy(config)
        shorten_config(new_config, removed, count)
        written = _write(kept, staged, new_config)
        files = staged.commit()
    changes = {k: v for k, v in new_config.to_dict().items() if config.to_dict().get(k) != v}
    timings = {"open": t_open - t0, "scores": t_scored - t_open, "write": time.perf_counter() - t_scored}
    return CheckpointDepthResult(os.path.abspath(os.fspath(out)), stack, tuple(sorted(removed)),
                                 tuple(float(s) for s in scores), changes, tuple(files), _elements(checkpoint),
                                 _elements(kept), written, timings)
