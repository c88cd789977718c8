"""Write a pruned checkpoint shard by shard: the same shard files and key layout, a new index, the new config,
and the tokenizer/generation files copied; all into a StagedDirectory, committed in one rename.

Per tensor: read (mmap), index_select along every pruned dim, check the shape the pruned graph has, write.
Peak memory: one output shard plus one input tensor.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Mapping, Sequence

import numpy as np
import torch

from ..atomic import StagedDirectory
from ..errors import GraphPruneError
from .source import CONFIG, INDEX, Checkpoint

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".index.json")
"""Files never copied: weights of the unpruned model in any format (stale once the model is pruned)."""

Cuts = Mapping[str, Sequence[tuple[int, np.ndarray]]]  # checkpoint key -> [(dim, kept positions)]


def pruned_tensor(key: str, tensor: torch.Tensor, cuts: Cuts, expected: Mapping[str, tuple]) -> torch.Tensor:
    """`tensor` with only the kept positions of each pruned dim, contiguous, its dtype kept; its shape checked."""
    for dim, positions in cuts.get(key, ()):
        tensor = tensor.index_select(dim, torch.as_tensor(positions, dtype=torch.long))
    if tuple(tensor.shape) != expected[key]:
        raise GraphPruneError(f"tensor {key!r} would be written with shape {tuple(tensor.shape)} but the pruned "
                              f"graph has {expected[key]}. This is a graphprune bug.")
    return tensor.contiguous()


def write_shards(checkpoint: Checkpoint, staged: StagedDirectory, cuts: Cuts, expected: Mapping[str, tuple]) -> int:
    """Each input shard becomes the output shard of the same name; returns the bytes of tensor data written."""
    from safetensors.torch import save_file

    total = 0
    for shard in checkpoint.shards:
        out = {key: pruned_tensor(key, t, cuts, expected)
               for key, t in checkpoint.tensors(checkpoint.keys_in(shard))}
        total += sum(t.numel() * t.element_size() for t in out.values())
        save_file(out, staged.file(shard), metadata=dict(checkpoint.metadata[shard] or {"format": "pt"}))
        del out
    return total


def write_index(checkpoint: Checkpoint, staged: StagedDirectory, total_size: int) -> None:
    if checkpoint.index is None:
        return
    index = {**checkpoint.index, "metadata": {**checkpoint.index.get("metadata", {}), "total_size": total_size},
             "weight_map": dict(checkpoint.index["weight_map"])}
    with open(staged.file(INDEX), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")


def copy_side_files(checkpoint: Checkpoint, staged: StagedDirectory) -> list[str]:
    """Copy every top-level file but the config and weights (tokenizer, generation config...); returns their names."""
    copied = []
    for name in sorted(os.listdir(checkpoint.path)):
        src = os.path.join(checkpoint.path, name)
        if name == CONFIG or name.endswith(WEIGHT_SUFFIXES) or not os.path.isfile(src) or name.startswith("."):
            continue
        shutil.copy2(src, staged.file(name))
        copied.append(name)
    return copied
