"""Peak memory of prune_checkpoint on a synthetic Llama checkpoint (random bf16 weights, sharded safetensors).

Usage: python bench/checkpoint_stream.py [--layers 22] [--hidden 2048] [--heads 32] [--kv-heads 4]
                                         [--intermediate 5632] [--vocab 32000] [--shard-mb 200] [--ratio 0.3]
                                         [--dir DIR] [--json PATH]

The defaults are TinyLlama-1.1B's shape. A first child process writes the checkpoint shard by shard
(the model is built on the meta device; each tensor is drawn, cast to bf16 and written with its shard,
so the writer never holds the model); a second child process runs
`graphprune.prune_checkpoint(DIR/src, DIR/out, ratio=..., importance="l2")` and reports its peak
resident memory (VmHWM) after imports and at the end. The script prints that peak as a multiple of the
largest shard and of the whole checkpoint (the issue's goal: a small multiple of the largest shard).
Needs about twice the checkpoint's size of free disk in DIR (default: a temporary directory, removed after).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def config_of(args):
    import transformers

    return transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048, use_cache=False, tie_word_embeddings=False, dtype="bfloat16",
        architectures=["LlamaForCausalLM"])


def write_checkpoint(args, path: str) -> None:
    """Random bf16 tensors (std 0.02; norm weights 1), shards of at most --shard-mb, an index, the config."""
    import torch
    import transformers
    from safetensors.torch import save_file

    config = config_of(args)
    with torch.device("meta"):
        meta = transformers.LlamaForCausalLM(config)
    os.makedirs(path)
    generator = torch.Generator().manual_seed(0)
    groups, current, size = [], {}, 0
    for key, t in meta.state_dict().items():
        nbytes = t.numel() * 2
        if current and size + nbytes > args.shard_mb * 2**20:
            groups.append(current)
            current, size = {}, 0
        current[key] = tuple(t.shape)
        size += nbytes
    groups.append(current)
    weight_map, total = {}, 0
    for k, shapes in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {key: (torch.ones(shape) if key.endswith("norm.weight") else
                         torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
                   for key, shape in shapes.items()}
        save_file(tensors, os.path.join(path, name), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update(dict.fromkeys(shapes, name))
        del tensors
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    config.save_pretrained(path)


def prune(args, src: str, out: str, queue) -> None:
    import graphprune
    from graphprune.timing.memory import peak_rss_bytes

    baseline = peak_rss_bytes()
    t0 = time.perf_counter()
    result = graphprune.prune_checkpoint(src, out, ratio=args.ratio, importance="l2")
    queue.put({"seconds": time.perf_counter() - t0, "peak_rss": peak_rss_bytes(), "rss_after_imports": baseline,
               "timings": dict(result.timings), "config_changes": dict(result.config_changes),
               "params_before": result.report.params_before, "params_after": result.report.params_after,
               "bytes_written": result.bytes_written})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("--layers", 22), ("--hidden", 2048), ("--heads", 32), ("--kv-heads", 4),
                          ("--intermediate", 5632), ("--vocab", 32000), ("--shard-mb", 200)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="gp-ckpt-bench-")
    src, out = os.path.join(root, "src"), os.path.join(root, "out")
    context = multiprocessing.get_context("spawn")
    try:
        writer = context.Process(target=write_checkpoint, args=(args, src))
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            raise SystemExit(f"writing the checkpoint failed (exit code {writer.exitcode})")
        shards = [os.path.getsize(os.path.join(src, n)) for n in os.listdir(src) if n.endswith(".safetensors")]
        queue = context.Queue()
        pruner = context.Process(target=prune, args=(args, src, out, queue))
        pruner.start()
        pruner.join()  # the result is one small dict: it fits the queue's pipe, so joining first cannot deadlock
        if pruner.exitcode != 0:
            raise SystemExit(f"prune_checkpoint failed in the child process (exit code {pruner.exitcode})")
        measured = queue.get(timeout=60)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    measured.update(checkpoint_bytes=sum(shards), largest_shard=max(shards), shards=len(shards))
    gib = 2**30
    print(f"checkpoint: {measured['checkpoint_bytes'] / gib:.3f} GiB in {len(shards)} shards, largest "
          f"{measured['largest_shard'] / gib:.3f} GiB; params {measured['params_before']:,} -> "
          f"{measured['params_after']:,}")
    print(f"prune_checkpoint: {measured['seconds']:.1f} s {measured['timings']}; peak RSS "
          f"{measured['peak_rss'] / gib:.3f} GiB (after imports {measured['rss_after_imports'] / gib:.3f} GiB) = "
          f"{measured['peak_rss'] / measured['largest_shard']:.2f}x the largest shard, "
          f"{measured['peak_rss'] / measured['checkpoint_bytes']:.2f}x the checkpoint")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(measured, f, indent=1)


if __name__ == "__main__":
    main()
