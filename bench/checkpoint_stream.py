"""Peak memory of prune_checkpoint on a synthetic Llama checkpoint (random bf16 weights, sharded safetensors).

Usage: python bench/checkpoint_stream.py [--layers 22] [--hidden 2048] [--heads 32] [--kv-heads 4]
                                         [--intermediate 5632] [--vocab 32000] [--shard-mb 200] [--ratio 0.3]
                                         [--dir DIR] [--json PATH]

The defaults are TinyLlama-1.1B's shape. A first child process writes the checkpoint tensor by tensor
(bench/synthetic_llama.py: random bf16 weights, shards of at most --shard-mb); a second child process runs
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


def write(args, path: str) -> None:
    from synthetic_llama import llama_config, write_checkpoint

    config = llama_config(layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                          intermediate=args.intermediate, vocab=args.vocab)
    write_checkpoint(config, path, args.shard_mb * 2**20)


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
        writer = context.Process(target=write, args=(args, src))
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
