"""prune_checkpoint against the in-memory path on a random TinyLlama-1.1B-shaped checkpoint: are the written
tensors and configs bit-identical? Times and peak RSS of both.

Usage: python bench/checkpoint_identity.py [--dir DIR] [--out DIR] [--importance l2 [wanda]] [--ratio 0.25]
                                           [--layers 22] [--calibration 4] [--tokens 32] [--keep-output]

1. The checkpoint (hidden 2048, 22 layers, 32 query / 4 KV heads, MLP 5632, vocabulary 32000, untied: TinyLlama
   1.1B's shape) is written once in float32, in shards of at most 2 GB, into --dir (default /work/tinyllama-fp32)
   by bench/synthetic_llama.py and reused by later runs. float32, so that both paths write float32 and
   "bit-identical" needs no cast (prune_graph on a bf16 model would square in bf16, prune_checkpoint in float32).
2. Per --importance, two child processes, each under `/usr/bin/time -v` (wall time, maximum resident set size):
   streamed:  graphprune.prune_checkpoint(DIR, OUT/streamed-IMP, ratio=R, importance=IMP[, calibration=batches])
              (its progress events are printed: one per shard scored or written, per layer calibrated)
   in memory: AutoModelForCausalLM.from_pretrained(DIR, dtype=float32) -> graphprune.prune_graph(model,
              (batches[0],), ratio=R, importance=IMP[, calibration=[(b,) for b in batches]], frontend="export")
              -> result.module (rebuilt in the model's class, checked on the example input)
              -> .save_pretrained(OUT/memory-IMP)
   Every other option is left at its default, which prune_checkpoint and prune_graph share (target "auto",
   round_to None, scope "local", min_keep 0.1); frontend "export" is the one prune_checkpoint uses. batches:
   --calibration sequences of --tokens random token ids (seed 0) in batches of 4 (wanda's calibration; the
   in-memory example input either way).
3. Every tensor of both outputs, key by key: torch.equal (dtype and shape included), the count compared and
   equal, the max |difference| of any unequal one; the keys only one side wrote; the config.json fields that
   differ (transformers_version aside).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from llm_checkpoint import GIB, available_bytes, directory_bytes, timed_child  # noqa: E402

SHAPE = dict(hidden=2048, heads=32, kv_heads=4, intermediate=5632, vocab=32000)
SHARD_BYTES = 2 * 10**9
CALIBRATION_BATCH = 4


def batches(args) -> list:
    import torch

    ids = torch.randint(0, SHAPE["vocab"], (args.calibration, args.tokens), generator=torch.Generator().manual_seed(0))
    return list(ids.split(CALIBRATION_BATCH))


def child_streamed(args) -> None:
    import graphprune

    extra = {"calibration": batches(args)} if args.importance == "wanda" else {}
    events = []
    t0 = time.perf_counter()
    result = graphprune.prune_checkpoint(args.dir, args.out, ratio=args.ratio, importance=args.importance,
                                         progress=events.append, **extra)
    print(json.dumps({"seconds": time.perf_counter() - t0, "params_after": result.report.params_after,
                      "params_before": result.report.params_before, "progress": [e.line() for e in events]}))


def child_memory(args) -> None:
    import torch
    import transformers

    import graphprune

    calibration = batches(args)
    extra = {"calibration": [(b,) for b in calibration]} if args.importance == "wanda" else {}
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(args.dir, dtype=torch.float32).eval()
    loaded = time.perf_counter()
    result = graphprune.prune_graph(model, (calibration[0],), ratio=args.ratio, importance=args.importance,
                                    frontend="export", **extra)
    pruned = time.perf_counter()
    module = result.module  # the caller's class rebuilt with the pruned tensors, checked on the example input
    rebuilt = time.perf_counter()
    module.save_pretrained(args.out)
    print(json.dumps({"seconds": time.perf_counter() - t0, "load_seconds": loaded - t0,
                      "prune_seconds": pruned - loaded, "module_seconds": rebuilt - pruned,
                      "save_seconds": time.perf_counter() - rebuilt,
                      "params_after": result.report.params_after, "params_before": result.report.params_before}))


def stored_keys(directory: str) -> dict[str, str]:
    """key -> the safetensors file of `directory` holding it."""
    from safetensors import safe_open

    where = {}
    for name in sorted(n for n in os.listdir(directory) if n.endswith(".safetensors")):
        with safe_open(os.path.join(directory, name), "pt") as f:
            where.update(dict.fromkeys(f.keys(), os.path.join(directory, name)))
    return where


def compare_tensors(a: str, b: str) -> dict:
    """Key by key over both directories: counts compared and equal, the max |a - b| of unequal ones, odd keys."""
    import torch
    from safetensors import safe_open

    left, right = stored_keys(a), stored_keys(b)
    common = sorted(set(left) & set(right))
    equal, worst, unequal = 0, 0.0, []
    for key in common:
        with safe_open(left[key], "pt") as f:
            x = f.get_tensor(key)
        with safe_open(right[key], "pt") as f:
            y = f.get_tensor(key)
        if x.dtype == y.dtype and torch.equal(x, y):
            equal += 1
            continue
        unequal.append(f"{key} {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}")
        if x.shape == y.shape:
            worst = max(worst, float((x.double() - y.double()).abs().max()))
    return {"compared": len(common), "equal": equal, "max_abs_diff": worst, "unequal": unequal[:5],
            "only_streamed": sorted(set(left) - set(right))[:5], "only_memory": sorted(set(right) - set(left))[:5]}


def compare_configs(a: str, b: str) -> dict:
    configs = []
    for directory in (a, b):
        with open(os.path.join(directory, "config.json")) as f:
            configs.append({k: v for k, v in json.load(f).items() if k != "transformers_version"})
    return {k: (configs[0].get(k), configs[1].get(k)) for k in sorted(set(configs[0]) | set(configs[1]))
            if configs[0].get(k) != configs[1].get(k)}


def run_pair(args, importance: str) -> bool:
    """Both children for `importance`, their figures and the comparison printed; True when all is identical."""
    common = ["--dir", args.dir, "--ratio", str(args.ratio), "--importance", importance,
              "--calibration", str(args.calibration), "--tokens", str(args.tokens)]
    outs = {side: os.path.join(args.out, f"{side}-{importance}") for side in ("streamed", "memory")}
    for side, out in outs.items():
        print(f"MemAvailable {available_bytes() / GIB:.1f} GiB before the {side} child", flush=True)
        measured, wall, rss = timed_child(["--child", side, "--out", out, *common], script=__file__)
        extra = ", ".join(f"{k.removesuffix('_seconds')} {v:.1f} s" for k, v in measured.items()
                          if k.endswith("_seconds"))
        print(f"{importance} {side}: wall {wall:.1f} s (imports included; the call itself {measured['seconds']:.1f} s"
              f"{': ' + extra if extra else ''}); peak RSS {rss / GIB:.2f} GiB; params "
              f"{measured['params_before']:,} -> {measured['params_after']:,}; output "
              f"{directory_bytes(out) / GIB:.2f} GiB", flush=True)
        for line in measured.get("progress", ()):
            print(f"    progress: {line}")
    tensors, config = compare_tensors(outs["streamed"], outs["memory"]), compare_configs(outs["streamed"],
                                                                                         outs["memory"])
    print(f"{importance}: tensors compared {tensors['compared']}, equal (torch.equal, same dtype) {tensors['equal']}, "
          f"max abs diff of unequal {tensors['max_abs_diff']:g}; only streamed {tensors['only_streamed']}, only in "
          f"memory {tensors['only_memory']}; first unequal {tensors['unequal']}")
    print(f"{importance}: config.json fields that differ (transformers_version aside): {config or 'none'}")
    return tensors["equal"] == tensors["compared"] and not (tensors["only_streamed"] or tensors["only_memory"]
                                                            or config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/work/tinyllama-fp32")
    parser.add_argument("--out", default=None)
    parser.add_argument("--importance", nargs="+", default=["l2"], choices=["l1", "l2", "wanda"])
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--calibration", type=int, default=4, help="calibration sequences")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per calibration sequence")
    parser.add_argument("--keep-output", action="store_true")
    parser.add_argument("--child", choices=["streamed", "memory"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dir = os.path.abspath(args.dir)
    if args.child:
        args.importance = args.importance[0]
        return (child_streamed if args.child == "streamed" else child_memory)(args)

    import torch
    import transformers

    from graphprune.timing import cpu_name
    from synthetic_llama import ensure_checkpoint, llama_config

    args.out = os.path.abspath(args.out or args.dir.rstrip("/") + "-identity")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, transformers "
          f"{transformers.__version__}; MemAvailable {available_bytes() / GIB:.1f} GiB")
    ensure_checkpoint(llama_config(layers=args.layers, dtype="float32", **SHAPE), args.dir, SHARD_BYTES)
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    try:
        identical = [run_pair(args, importance) for importance in args.importance]
    finally:
        if not args.keep_output and os.path.exists(args.out):
            shutil.rmtree(args.out)
    print("bit-identical: " + ", ".join(f"{i} {'yes' if ok else 'NO'}" for i, ok in zip(args.importance, identical)))
    if not all(identical):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
