"""A Hugging Face checkpoint directory read lazily: config.json and safetensors shards, memory-mapped.

    DIR/config.json
    DIR/model.safetensors                                   one file, or
    DIR/model-0000k-of-0000n.safetensors + DIR/model.safetensors.index.json   {"weight_map": {key: file}}

Nothing is loaded when a Checkpoint is opened: only the shards' headers are read (key -> shape, dtype).
`tensors(keys)` yields one tensor at a time, shard by shard, each read through `safe_open`'s mmap, so
at most one tensor of the checkpoint is in memory per step.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

import torch

from ..errors import InputError

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """True when `path` is a directory with config.json and safetensors weights (one file or an index)."""
    path = os.fspath(path)
    return (os.path.isfile(os.path.join(path, CONFIG))
            and any(os.path.isfile(os.path.join(path, name)) for name in (SINGLE, INDEX)))


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the {what} {path!r}: {exc}") from exc


def _header(path: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """key -> (shape, dtype) of one shard, from its header only."""
    from safetensors import safe_open

    out = {}
    with safe_open(path, framework="pt") as f:
        for key in f.keys():
            part = f.get_slice(key)
            out[key] = (tuple(part.get_shape()), _DTYPES[part.get_dtype()])
    return out


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


@dataclass(frozen=True)
class Checkpoint:
    """An opened checkpoint directory: its config (as written), its shards in order, and every tensor's
    shard, shape and dtype. `index` is the index json when the checkpoint is sharded, else None."""

    path: str
    config: Mapping
    shards: tuple[str, ...]
    shard_of: Mapping[str, str]  # key -> shard file name
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, torch.dtype]
    index: Mapping | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Checkpoint":
        path = os.path.abspath(os.fspath(path))
        if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, CONFIG)):
            raise InputError(f"{path!r} is not a Hugging Face checkpoint directory: it has no {CONFIG}; pass the "
                             "directory save_pretrained wrote")
        config = _read_json(os.path.join(path, CONFIG), "model config")
        index = _read_json(os.path.join(path, INDEX), "shard index") if os.path.isfile(os.path.join(path, INDEX)) \
            else None
        if index is None and not os.path.isfile(os.path.join(path, SINGLE)):
            raise InputError(f"{path!r} has no {SINGLE} and no {INDEX}: graphprune streams safetensors checkpoints "
                             "only; convert the weights with save_pretrained(..., safe_serialization=True)")
        shards = tuple(dict.fromkeys(index.get("weight_map", {}).values())) if index else (SINGLE,)
        shard_of, shapes, dtypes = {}, {}, {}
        for shard in shards:
            file = os.path.join(path, shard)
            if not os.path.isfile(file):
                raise InputError(f"shard {shard!r} named by {INDEX} is missing from {path!r}")
            for key, (shape, dtype) in _header(file).items():
                shard_of[key], shapes[key], dtypes[key] = shard, shape, dtype
        return cls(path, config, shards, shard_of, shapes, dtypes, index)

    def keys_in(self, shard: str) -> list[str]:
        return [k for k, s in self.shard_of.items() if s == shard]

    def shard_metadata(self, shard: str) -> dict[str, str] | None:
        from safetensors import safe_open

        with safe_open(os.path.join(self.path, shard), framework="pt") as f:
            return f.metadata()

    def tensors(self, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, tensor) for each of `keys`, shard by shard (one shard open, one tensor read at a time)."""
        from safetensors import safe_open

        wanted = set(keys)
        for shard in self.shards:
            mine = [k for k in self.keys_in(shard) if k in wanted]
            if not mine:
                continue
            with safe_open(os.path.join(self.path, shard), framework="pt") as f:
                for key in mine:
                    yield key, f.get_tensor(key)
