"""A Hugging Face checkpoint directory read lazily: config.json and safetensors shards, memory-mapped.

    DIR/config.json
    DIR/model.safetensors                                   one file, or
    DIR/model-0000k-of-0000n.safetensors + DIR/model.safetensors.index.json   {"weight_map": {key: file}}

Nothing is loaded when a Checkpoint is opened: only the shards' headers are read (key -> bytes, shape, dtype).
`tensors(keys)` yields one tensor at a time, shard by shard, each read with plain file reads into its own
buffer (no mmap, whose touched pages would count as resident while the file is open), so at most one
tensor of the checkpoint is in memory per step.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

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


DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


@dataclass(frozen=True)
class Entry:
    """Where one tensor lies in its shard: bytes [begin, end) of the file, and its shape and dtype."""

    begin: int
    end: int
    shape: tuple[int, ...]
    dtype: torch.dtype


def _header(path: str) -> tuple[dict[str, Entry], dict[str, str] | None]:
    """key -> Entry of one safetensors file, and its metadata: the 8-byte little-endian header length, the JSON
    header, then the data (the format's specification)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            file_size = os.fstat(f.fileno()).st_size
            if not 0 < size <= file_size - 8:
                raise ValueError(f"header length {size} does not fit the file's {file_size} bytes")
            header = json.loads(f.read(size))
        start = 8 + size
        entries = {key: _entry(path, key, info, start, file_size) for key, info in header.items()
                   if key != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path!r} is not a readable safetensors file ({type(exc).__name__}: {exc}); write the "
                         "checkpoint again with save_pretrained(..., safe_serialization=True)") from exc
    return entries, header.get("__metadata__")


def _entry(path: str, key: str, info: Mapping, start: int, file_size: int) -> Entry:
    """One header entry checked: a dtype graphprune reads, and bytes inside the file that fit the shape."""
    if info["dtype"] not in DTYPES:
        raise InputError(f"tensor {key!r} of {path!r} has dtype {info['dtype']}, which graphprune cannot read")
    begin, end = (int(x) for x in info["data_offsets"])
    shape, dtype = tuple(int(d) for d in info["shape"]), DTYPES[info["dtype"]]
    if not 0 <= begin <= end <= file_size - start or end - begin != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"tensor {key!r} has bytes [{begin}, {end}), which do not hold its shape {list(shape)} "
                         f"of {info['dtype']} inside the file")
    return Entry(start + begin, start + end, shape, dtype)


def _read(f, entry: Entry) -> torch.Tensor:
    """One tensor, read into a fresh buffer (no mmap: nothing of the file stays resident after it)."""
    buffer = torch.empty(entry.end - entry.begin, dtype=torch.uint8)
    if len(buffer):
        f.seek(entry.begin)
        f.readinto(memoryview(buffer.numpy()))
    return buffer.view(entry.dtype).reshape(entry.shape)


@dataclass(frozen=True)
class Checkpoint:
    """An opened checkpoint directory: its config (as written), its shards in order, and every tensor's
    shard, shape and dtype. `index` is the index json when the checkpoint is sharded, else None."""

    path: str
    config: Mapping
    shards: tuple[str, ...]
    entries: Mapping[str, Entry]
    shard_of: Mapping[str, str]  # key -> shard file name
    metadata: Mapping[str, Mapping | None]  # shard file name -> its header's __metadata__
    index: Mapping | None = field(default=None, repr=False)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: e.shape for k, e in self.entries.items()}

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
        entries, shard_of, metadata = {}, {}, {}
        for shard in shards:
            file = os.path.join(path, shard)
            if not os.path.isfile(file):
                raise InputError(f"shard {shard!r} named by {INDEX} is missing from {path!r}")
            found, metadata[shard] = _header(file)
            entries.update(found)
            shard_of.update(dict.fromkeys(found, shard))
        return cls(path, config, shards, entries, shard_of, metadata, index)

    def keys_in(self, shard: str) -> list[str]:
        """The keys stored in `shard`, in the order of their bytes in the file (reads go forward)."""
        return sorted((k for k, s in self.shard_of.items() if s == shard), key=lambda k: self.entries[k].begin)

    def extent(self, keys: Iterable[str]) -> tuple[int, int]:
        """(shards holding any of `keys`, bytes of their tensors): what tensors(keys) reads."""
        keys = set(keys)
        return len({self.shard_of[k] for k in keys}), sum(self.entries[k].end - self.entries[k].begin for k in keys)

    def tensors(self, keys: Iterable[str], on_shard: Callable[[int], None] | None = None
                ) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, tensor) for each of `keys`, shard by shard, one tensor in memory at a time (the caller's);
        `on_shard(bytes read)` once the caller is done with a shard's last tensor."""
        wanted = set(keys)
        for shard in self.shards:
            mine = [k for k in self.keys_in(shard) if k in wanted]
            if not mine:
                continue
            with open(os.path.join(self.path, shard), "rb") as f:
                for key in mine:
                    yield key, _read(f, self.entries[key])
            if on_shard is not None:
                on_shard(sum(self.entries[k].end - self.entries[k].begin for k in mine))
