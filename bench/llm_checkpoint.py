"""Prune a random Llama-3.1-8B-shaped checkpoint (bf16, 5 GB shards) on disk at ratio 0.25: wall time and peak RSS.

Usage: python bench/llm_checkpoint.py [--dir DIR] [--out DIR] [--importance l2|l1|wanda] [--ratio 0.25]
                                      [--layers 32] [--calibration 16] [--tokens 128] [--new-tokens 4]
                                      [--keep-output] [--no-load] [--json PATH]

1. The checkpoint (hidden 4096, 32 layers, 32 query / 8 KV heads, MLP 14336, vocabulary 128256, untied,
   bf16, shards of at most 5 GB: about 16 GB) is written once into --dir (default /work/llm8b, or
   /work/llm8b-<N>layers with --layers N) by bench/synthetic_llama.py and reused by later runs; a --dir
   that holds a checkpoint of another shape is refused.
2. A child process, run under `/usr/bin/time -v`, calls
   `graphprune.prune_checkpoint(DIR, OUT, ratio=0.25, importance=...)` (wanda: --calibration sequences of
   --tokens random token ids, seed 0, in batches of 4). The script prints the child's wall time (from its
   start to its exit, imports included), its maximum resident set size as /usr/bin/time reports it, the
   stages' times, the parameter counts and the size of the written checkpoint.
3. Another child, also under `/usr/bin/time -v`, loads the pruned checkpoint with
   `AutoModelForCausalLM.from_pretrained(OUT, dtype=torch.bfloat16)` and generate()s --new-tokens greedy
   tokens from 8 random prompt tokens (skipped with --no-load, or when MemAvailable is below 1.3x the pruned
   checkpoint's size).
The output directory (default DIR-pruned) is deleted at the end unless --keep-output.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))

SHAPE = dict(hidden=4096, heads=32, kv_heads=8, intermediate=14336, vocab=128256)
SHARD_BYTES = 5 * 10**9
GIB = 2**30
CALIBRATION_BATCH = 4


def default_dir(layers: int) -> str:
    return "/work/llm8b" if layers == 32 else f"/work/llm8b-{layers}layers"


def ensure_checkpoint(path: str, layers: int) -> None:
    """The 8B-shaped checkpoint in `path`, written unless it is there already (synthetic_llama.ensure_checkpoint)."""
    sys.path.insert(0, HERE)
    from synthetic_llama import ensure_checkpoint as ensure, llama_config

    ensure(llama_config(layers=layers, **SHAPE), path, SHARD_BYTES)


def timed_child(argv: list[str], script: str = __file__) -> tuple[dict, float, float]:
    """Run `script` (this one by default) with `argv` under /usr/bin/time -v: (its last JSON line, wall seconds,
    max RSS bytes)."""
    command = ["/usr/bin/time", "-v", sys.executable, os.path.abspath(script), *argv]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"the child {' '.join(argv[:1])} failed (exit code {done.returncode})")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if found is None:
        raise SystemExit("/usr/bin/time -v printed no maximum resident set size")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]), wall, int(found.group(1)) * 1024


def calibration(args) -> list:
    import torch

    ids = torch.randint(0, SHAPE["vocab"], (args.calibration, args.tokens), generator=torch.Generator().manual_seed(0))
    return list(ids.split(CALIBRATION_BATCH))


def child_prune(args) -> None:
    import graphprune

    t0 = time.perf_counter()
    extra = {"calibration": calibration(args)} if args.importance == "wanda" else {}
    result = graphprune.prune_checkpoint(args.dir, args.out, ratio=args.ratio, importance=args.importance, **extra)
    print(json.dumps({"seconds": time.perf_counter() - t0, "timings": dict(result.timings),
                      "config_changes": {k: v for k, v in result.config_changes.items() if isinstance(v, int)},
                      "params_before": result.report.params_before, "params_after": result.report.params_after,
                      "bytes_written": result.bytes_written}))


def child_load(args) -> None:
    import torch
    import transformers

    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.bfloat16).eval()
    loaded = time.perf_counter()
    prompt = torch.randint(0, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                             do_sample=False, use_cache=True)
    print(json.dumps({"load_seconds": loaded - t0, "generate_seconds": time.perf_counter() - loaded,
                      "class": type(model).__name__, "dtype": str(model.dtype),
                      "params": sum(p.numel() for p in model.parameters()),
                      "generated": out[0, prompt.shape[1]:].tolist()}))


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))


def report_prune(args, measured: dict, wall: float, rss: int) -> None:
    print(f"prune_checkpoint ({args.importance}, ratio {args.ratio}): wall {wall:.1f} s ({wall / 60:.2f} min, "
          f"imports included; prune_checkpoint itself {measured['seconds']:.1f} s: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in measured["timings"].items()) + ")")
    print(f"peak RSS (/usr/bin/time -v, maximum resident set size): {rss / GIB:.2f} GiB")
    print(f"params {measured['params_before']:,} -> {measured['params_after']:,}; config {measured['config_changes']}")
    print(f"output: {directory_bytes(args.out) / GIB:.2f} GiB in {args.out} "
          f"({measured['bytes_written'] / GIB:.2f} GiB of tensors)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--importance", default="l2", choices=["l1", "l2", "wanda"])
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--calibration", type=int, default=16, help="calibration sequences (wanda)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per calibration sequence (wanda)")
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--keep-output", action="store_true")
    parser.add_argument("--no-load", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", choices=["prune", "load"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dir = os.path.abspath(args.dir or default_dir(args.layers))
    args.out = os.path.abspath(args.out or args.dir.rstrip("/") + "-pruned")
    if args.child:
        return (child_prune if args.child == "prune" else child_load)(args)

    from graphprune.timing import cpu_name

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; MemAvailable {available_bytes() / GIB:.1f} GiB")
    ensure_checkpoint(args.dir, args.layers)
    shards = [os.path.getsize(os.path.join(args.dir, n)) for n in os.listdir(args.dir) if n.endswith(".safetensors")]
    print(f"source: {sum(shards) / GIB:.2f} GiB in {len(shards)} shards (largest {max(shards) / GIB:.2f} GiB)")
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    common = ["--dir", args.dir, "--out", args.out, "--ratio", str(args.ratio), "--importance", args.importance,
              "--calibration", str(args.calibration), "--tokens", str(args.tokens), "--new-tokens", str(args.new_tokens)]
    results = {}
    try:
        measured, wall, rss = timed_child(["--child", "prune", *common])
        report_prune(args, measured, wall, rss)
        results["prune"] = {**measured, "wall_seconds": wall, "max_rss_bytes": rss}
        need, free = 1.3 * measured["bytes_written"], available_bytes()
        if args.no_load or free < need:
            print("load + generate: skipped" + ("" if args.no_load else
                                                f" (MemAvailable {free / GIB:.1f} GiB < {need / GIB:.1f} GiB)"))
        else:
            loaded, wall, rss = timed_child(["--child", "load", *common])
            print(f"from_pretrained(dtype=bfloat16): {loaded['class']} {loaded['dtype']}, {loaded['params']:,} "
                  f"params, {loaded['load_seconds']:.1f} s; generate({args.new_tokens} tokens) "
                  f"{loaded['generate_seconds']:.1f} s -> {loaded['generated']}; peak RSS {rss / GIB:.2f} GiB")
            results["load"] = {**loaded, "wall_seconds": wall, "max_rss_bytes": rss}
    finally:
        if not args.keep_output and os.path.exists(args.out):
            shutil.rmtree(args.out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
