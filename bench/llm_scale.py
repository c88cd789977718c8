"""Prune a TinyLlama-shaped decoder (about 1.1B parameters, random weights) at ratio 0.5: wall time and peak memory.

Usage: python bench/llm_scale.py [--layers 22] [--hidden 2048] [--heads 32] [--kv-heads 4] [--intermediate 5632]
                                 [--tokens 16] [--ratio 0.5]

The defaults are TinyLlama-1.1B's shape (vocabulary 32000). The model is built from a
config with random weights (nothing is downloaded), then `graphprune.prune_graph(model,
(ids,), ratio=...)` runs with the default options; the script prints the wall time of each
stage, the parameter counts before/after (measured by the report), the weight bytes, and the
process's peak resident memory (VmHWM) before and after pruning, as a multiple of the
weights' bytes. Peak memory includes the model itself (1x).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import graphprune  # noqa: E402
from graphprune.timing import cpu_name  # noqa: E402
from graphprune.timing.memory import peak_rss_bytes  # noqa: E402


def build(args) -> torch.nn.Module:
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048, use_cache=False)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()

    import transformers

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, transformers {transformers.__version__}")
    started = time.perf_counter()
    model = build(args)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    ids = torch.randint(0, 32000, (1, args.tokens))
    built_at = time.perf_counter()
    peak_model = peak_rss_bytes()
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.3f} B parameters, {weights / 2**30:.2f} GiB of "
          f"weights, built in {built_at - started:.1f} s; peak RSS so far {peak_model / 2**30:.2f} GiB")

    result = graphprune.prune_graph(model, (ids,), ratio=args.ratio)
    done_at = time.perf_counter()
    peak = peak_rss_bytes()
    report = result.report
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    print(f"frontend: {report.frontend}")
    print(f"prune_graph at ratio {args.ratio}: {done_at - built_at:.1f} s wall ({stages})")
    print(f"parameters {report.params_before:,} -> {report.params_after:,} "
          f"({1 - report.params_after / report.params_before:.1%} removed); "
          f"MACs {report.macs_before:,} -> {report.macs_after:,}")
    print(f"peak RSS {peak / 2**30:.2f} GiB = {peak / weights:.2f}x the weights "
          f"(model alone: {peak_model / weights:.2f}x)")


if __name__ == "__main__":
    main()
