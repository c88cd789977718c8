"""Write a pruned checkpoint shard by shard: the same shard files and key layout, a new index, the new config,
and the tokenizer/generation files copied; all into a StagedDirectory, committed in one rename.

Per tensor: read (plain reads), index_select along every pruned dim, check the shape the pruned graph has,
append its bytes. A safetensors file is an 8-byte little-endian header length, a JSON header (key -> dtype,
shape, byte offsets into the data; padded with spaces to 8 bytes) and the tensors' bytes back to back: every
pruned shape is known before anything is read, so the header is written first and each tensor streamed after
it. Peak memory: one input tensor and its pruned copy.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Mapping, Sequence

import numpy as np
import torch

from ..atomic import StagedDirectory
from ..errors import GraphPruneError
from .progress import SILENT, Stage, Tracker
from .source import CONFIG, DTYPES, INDEX, Checkpoint

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".index.json")
"""Files never copied: weights of the unpruned model in any format (stale once the model is pruned)."""

SAFETENSORS_NAMES = {dtype: name for name, dtype in DTYPES.items()}

Cuts = Mapping[str, Sequence[tuple[int, np.ndarray]]]  # checkpoint key -> [(dim, kept positions)]


def pruned_tensor(key: str, tensor: torch.Tensor, cuts: Cuts, expected: Mapping[str, tuple]) -> torch.Tensor:
    """`tensor` with only the kept positions of each pruned dim, contiguous, its dtype kept; its shape checked."""
    for dim, positions in cuts.get(key, ()):
        tensor = tensor.index_select(dim, torch.tensor(positions, dtype=torch.long))
    if tuple(tensor.shape) != expected[key]:
        raise GraphPruneError(f"tensor {key!r} would be written with shape {tuple(tensor.shape)} but the pruned "
                              f"graph has {expected[key]}. This is a graphprune bug.")
    return tensor.contiguous()


def shard_header(layout: Sequence[tuple[str, torch.dtype, tuple]], metadata: Mapping[str, str] | None) -> bytes:
    """The length and JSON header of a safetensors file holding `layout`'s (key, dtype, shape) back to back, in
    that order."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key, dtype, shape in layout:
        size = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": SAFETENSORS_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def _raw(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous tensor, without a copy (numpy has no bfloat16: viewed as bytes first)."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def write_shards(checkpoint: Checkpoint, staged: StagedDirectory, cuts: Cuts, expected: Mapping[str, tuple],
                 progress: Tracker = SILENT) -> int:
    """Each input shard becomes the output shard of the same name, tensor by tensor; returns the bytes of tensor
    data written (progress: one WRITING step per shard, of the pruned tensors' bytes)."""
    sizes = {k: math.prod(expected[k]) * e.dtype.itemsize for k, e in checkpoint.entries.items()}
    writing = progress.stage(Stage.WRITING, len(checkpoint.shards), sum(sizes.values()))
    for shard in checkpoint.shards:
        keys = checkpoint.keys_in(shard)
        layout = [(k, checkpoint.entries[k].dtype, expected[k]) for k in keys]
        with open(staged.file(shard), "wb") as f:
            f.write(shard_header(layout, checkpoint.metadata[shard] or {"format": "pt"}))
            for key, tensor in checkpoint.tensors(keys):  # in keys' (the header's) order
                pruned = pruned_tensor(key, tensor, cuts, expected)
                del tensor  # the input's buffer goes before the next one is read
                f.write(_raw(pruned))
        writing.advance(sum(sizes[k] for k in keys))
    return writing.done


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
