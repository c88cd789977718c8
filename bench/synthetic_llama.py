"""A random Llama-shaped Hugging Face checkpoint on disk, for the checkpoint benchmarks (no weights downloaded).

`write_checkpoint(config, path, shard_bytes)` writes config.json, safetensors shards in the config's dtype
(llama_config: bf16 unless told) of at most `shard_bytes` (model-0000k-of-0000n.safetensors, in state_dict order) and
model.safetensors.index.json. The model is built on the meta device for its tensor names and shapes only;
each tensor is drawn (normal, std 0.02; norm weights 1), cast to that dtype and appended to its shard after the
shard's header
(graphprune.checkpoint.write.shard_header), so the writer holds one tensor at a time, whatever the size.
The index is written last: a directory with an index is complete.
"""
from __future__ import annotations

import json
import math
import os

INDEX = "model.safetensors.index.json"


def llama_config(*, layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int, vocab: int,
                 tied: bool = False, max_positions: int = 2048, dtype: str = "bfloat16"):
    import transformers

    return transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        use_cache=False, tie_word_embeddings=tied, dtype=dtype, architectures=["LlamaForCausalLM"])


def _shards(shapes: dict[str, tuple], shard_bytes: int, itemsize: int) -> list[dict[str, tuple]]:
    """state_dict order cut into runs of at most shard_bytes (a larger tensor gets a shard of its own)."""
    groups, current, size = [], {}, 0
    for key, shape in shapes.items():
        nbytes = itemsize * math.prod(shape)
        if current and size + nbytes > shard_bytes:
            groups.append(current)
            current, size = {}, 0
        current[key] = shape
        size += nbytes
    groups.append(current)
    return groups


def write_checkpoint(config, path: str, shard_bytes: int) -> int:
    """Write the checkpoint (module docstring) into the new directory `path`; returns its tensor bytes."""
    import torch
    import transformers

    from graphprune.checkpoint.write import shard_header

    dtype = config.dtype
    with torch.device("meta"):
        meta = transformers.LlamaForCausalLM(config)
    shapes = {key: tuple(t.shape) for key, t in meta.state_dict().items()}
    os.makedirs(path)
    generator = torch.Generator().manual_seed(0)
    groups = _shards(shapes, shard_bytes, dtype.itemsize)
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        layout = [(key, dtype, shape) for key, shape in group.items()]
        with open(os.path.join(path, name), "wb") as f:
            f.write(shard_header(layout, {"format": "pt"}))
            for key, shape in group.items():
                drawn = torch.ones(shape) if key.endswith("norm.weight") else \
                    torch.randn(shape, generator=generator).mul_(0.02)
                tensor = drawn.to(dtype)
                del drawn
                f.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
                total += tensor.numel() * dtype.itemsize
        weight_map.update(dict.fromkeys(group, name))
    config.save_pretrained(path)
    with open(os.path.join(path, INDEX), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return total


FIELDS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
          "vocab_size", "tie_word_embeddings", "dtype")


def ensure_checkpoint(config, path: str, shard_bytes: int) -> None:
    """Write the checkpoint into `path` unless it holds it already (its index is written last); a `path` that
    holds another shape, or is a half-written directory, is refused."""
    import time

    if os.path.isfile(os.path.join(path, INDEX)):
        with open(os.path.join(path, "config.json")) as f:
            found = json.load(f)
        if any(found.get(k) != config.to_dict().get(k) for k in FIELDS):
            raise SystemExit(f"--dir {path} holds a checkpoint of another shape "
                             f"({ {k: found.get(k) for k in FIELDS} }); pass another --dir or delete it")
        print(f"checkpoint: reusing {path}")
        return
    if os.path.exists(path):
        raise SystemExit(f"--dir {path} exists without {INDEX} (an interrupted write?); delete it first")
    t0 = time.perf_counter()
    total = write_checkpoint(config, path, shard_bytes)
    print(f"checkpoint: wrote {total / 2**30:.2f} GiB of {config.to_dict()['dtype']} tensors to {path} in "
          f"{time.perf_counter() - t0:.0f} s")
