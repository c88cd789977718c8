"""Hugging Face support table: what graphprune prunes in small random-config transformers, as they come.

Usage: python bench/hf_models.py [--ratios 0.3] [--models llama,qwen3,...] [--reasons 2]

For each family of bench/hf_families.py (random weights from a small config with the family's own
defaults, `use_cache=True` included; nothing is downloaded) and each ratio: `prune_graph(model,
inputs, ratio=r, target="none")`, then prints per family:
- groups frozen / total, and the most frequent freeze reasons (`--reasons` of them, below the table);
- parameters and MACs per token before -> after (per forward where no scaled_dot_product_attention counts the
  tokens: eager matmul attention), KV-cache bytes per token before -> after (decoders with SDPA);
- `result.module`: the caller's class rebuilt and verified against the pruned graph;
- `generate`: for causal LMs, `result.module.generate(..., use_cache=True)`'s greedy tokens equal the
  pruned graph's greedy tokens (the graph has no cache: the sequence is right-padded to the traced
  length, and causal attention never sees the padding);
- `save_pretrained`: the pruned module saved and reloaded gives the same outputs, where its config can
  state the pruned sizes;
- ONNX: export_onnx's ONNX Runtime max abs difference to the pruned graph (it fails past 1e-4 + 1e-3 x scale).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from hf_families import FAMILIES, LENGTH  # noqa: E402

import graphprune  # noqa: E402
from graphprune.errors import GraphPruneError  # noqa: E402
from graphprune.export import export_onnx  # noqa: E402

PROMPT, NEW = 4, 6


def _main_output(out) -> torch.Tensor:
    for name in ("logits", "last_hidden_state"):
        if getattr(out, name, None) is not None:
            return getattr(out, name)
    return out[0] if isinstance(out, (tuple, list)) else out


def _short(exc: BaseException) -> str:
    return f"no: {type(exc).__name__}: {str(exc).splitlines()[0][:70]}"


def _generates_like_the_graph(module, graph, ids: torch.Tensor) -> str:
    """Greedy tokens of module.generate with the KV cache vs the graph's, position by position."""
    prompt = ids[:, :PROMPT]
    module.generation_config.eos_token_id = None
    with torch.no_grad():
        tokens = module.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW,
                                 do_sample=False, use_cache=True, pad_token_id=0)
        buffer = torch.zeros(1, LENGTH, dtype=torch.long)
        buffer[0, :PROMPT] = prompt[0]
        for t in range(PROMPT, PROMPT + NEW):
            buffer[0, t] = _main_output(graph(buffer))[0, t - 1].argmax()
    return "yes" if torch.equal(tokens, buffer[:, :PROMPT + NEW]) else "no: tokens differ"


def _round_trip(module, inputs: tuple, tmp: str) -> str:
    try:
        module.save_pretrained(tmp)
    except GraphPruneError:
        return "no (config cannot state it)"
    reloaded = type(module).from_pretrained(tmp).eval()
    with torch.no_grad():
        same = torch.equal(_main_output(reloaded(*inputs)), _main_output(module(*inputs)))
    return "yes" if same else "no: reloaded outputs differ"


def _module_columns(result, inputs: tuple, causal: bool, tmp: str) -> tuple[str, str, str]:
    """result.module, generate and save_pretrained columns."""
    try:
        module = result.module
    except GraphPruneError as exc:
        return _short(exc), "-", "-"
    try:
        generate = _generates_like_the_graph(module, result.model, inputs[0]) if causal else "-"
    except Exception as exc:  # a bench reports every failure in its row
        generate = _short(exc)
    return "yes", generate, _round_trip(module, inputs, tmp)


def _onnx(result, inputs: tuple, tmp: str) -> str:
    try:
        return f"{export_onnx(result.model, inputs, os.path.join(tmp, 'm.onnx')).max_abs_diff:.1e}"
    except GraphPruneError as exc:
        return _short(exc)


def _macs(r) -> str:
    """MACs per token where the report counts tokens (models with scaled_dot_product_attention), else per forward."""
    if r.tokens:
        return f"{r.macs_per_token_before:,.0f} -> {r.macs_per_token_after:,.0f}"
    return f"{r.macs_before:,} -> {r.macs_after:,} per forward"


def _row(name: str, ratio: float, reasons: collections.Counter) -> str:
    family = FAMILIES[name]
    torch.manual_seed(0)
    model, inputs = family.build().eval(), family.inputs()
    start = time.perf_counter()
    try:
        result = graphprune.prune_graph(model, inputs, ratio=ratio, target="none")
    except GraphPruneError as exc:
        return f"| {name} | {ratio} | {_short(exc)} |"
    seconds = time.perf_counter() - start
    r = result.report
    for group in r.frozen_groups:
        reasons[(name, group.frozen_reasons[0].split(";")[0][:110])] += 1
    kv = f"{r.kv_bytes_per_token_before} -> {r.kv_bytes_per_token_after}" if r.attention else "-"
    with tempfile.TemporaryDirectory() as tmp:
        module, generate, saved = _module_columns(result, inputs, family.causal, tmp)
        onnx = _onnx(result, inputs, tmp)
    return (f"| {name} | {ratio} | {len(r.frozen_groups)}/{len(r.groups)} | "
            f"{r.params_before:,} -> {r.params_after:,} ({1 - r.params_after / r.params_before:.0%}) | "
            f"{_macs(r)} | {kv} | {module} | {generate} | "
            f"{saved} | {onnx} | {seconds:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.3")
    parser.add_argument("--models", default=",".join(FAMILIES))
    parser.add_argument("--reasons", type=int, default=2, help="freeze reasons listed per family")
    args = parser.parse_args()
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    print("| family | ratio | groups frozen | params before -> after | MACs/token before -> after | "
          "KV bytes/token before -> after | result.module | generate (cache) = graph | save_pretrained | "
          "ORT max diff | prune s |")
    print("|---|---:|---:|---:|---:|---:|---|---|---|---:|---:|")
    reasons: collections.Counter = collections.Counter()
    for name in args.models.split(","):
        for ratio in (float(r) for r in args.ratios.split(",")):
            print(_row(name, ratio, reasons), flush=True)
    print("\nFreeze reasons (first clause, frozen groups with it):")
    for name in args.models.split(","):
        for (family, reason), count in [item for item in reasons.most_common() if item[0][0] == name][:args.reasons]:
            print(f"- {family}: {count} x {reason}")


if __name__ == "__main__":
    main()
