"""Hugging Face support table: what graphprune prunes in small random-config transformers, measured.

Usage: python bench/hf_models.py [--ratios 0.3,0.5] [--models bert,gpt2,...]

For each model of tests/test_hf_structures.py (random weights from a small config: hidden 32,
2 layers, 4 heads, MLP 64; nothing is downloaded) and each ratio: `prune_graph(model, inputs,
ratio=r, target="none")` (frontend auto), then prints the prunable groups by structure (heads,
hidden, MLP/other channels), parameters and MACs per token before/after, KV-cache bytes per token
before/after (decoders), whether `result.module` (the caller's class back) rebuilds and verifies,
whether its `save_pretrained` works, and the ONNX Runtime max abs difference of the pruned model.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import graphprune  # noqa: E402
from graphprune.eager import EagerRebuildError  # noqa: E402
from graphprune.errors import GraphPruneError  # noqa: E402
from graphprune.export import export_onnx  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_hf_structures import MODELS, Structure, structures  # noqa: E402


def _main_output(out) -> torch.Tensor:
    for name in ("logits", "last_hidden_state"):
        if hasattr(out, name):
            return getattr(out, name)
    return out[0] if isinstance(out, (tuple, list)) else out


def _module_status(result, tmp: str) -> tuple[str, str]:
    try:
        module = result.module
    except EagerRebuildError as exc:
        return "no: " + str(exc)[:60], "-"
    try:
        module.save_pretrained(tmp)
    except EagerRebuildError:
        return "yes", "no (config cannot state it)"
    reloaded = type(module).from_pretrained(tmp).eval()
    with torch.no_grad():
        same = torch.equal(_main_output(reloaded(*result.example_inputs[:1])),
                           _main_output(module(*result.example_inputs[:1])))
    return "yes", "yes" if same else "reloads, logits differ"


def _onnx_diff(result, inputs: tuple, tmp: str) -> str:
    """export_onnx checks ONNX Runtime against PyTorch itself; this is its measured max abs difference."""
    return f"{export_onnx(result.model, inputs, os.path.join(tmp, 'm.onnx')).max_abs_diff:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    print("| model | ratio | prunable groups (heads / hidden / channels) | params before -> after | "
          "MACs/token before -> after | KV bytes/token before -> after | result.module | save_pretrained | ORT max diff |")
    print("|---|---:|---|---:|---:|---:|---|---|---:|")
    for name in args.models.split(","):
        build, make_inputs = MODELS[name]
        for ratio in (float(r) for r in args.ratios.split(",")):
            torch.manual_seed(0)
            model, inputs = build().eval(), make_inputs()
            try:
                result = graphprune.prune_graph(model, inputs, ratio=ratio, target="none")
            except GraphPruneError as exc:
                print(f"| {name} | {ratio} | fails: {str(exc)[:80]} |")
                continue
            analysis = graphprune.analyse(model, inputs)
            found = structures(analysis)
            counts = " / ".join(str(len(found[s])) for s in (Structure.HEADS, Structure.HIDDEN, Structure.CHANNELS))
            r = result.report
            kv = (f"{r.kv_bytes_per_token_before} -> {r.kv_bytes_per_token_after}" if r.attention else "-")
            with tempfile.TemporaryDirectory() as tmp:
                module, saved = _module_status(result, tmp)
                diff = _onnx_diff(result, inputs, tmp)
            print(f"| {name} | {ratio} | {counts} | {r.params_before:,} -> {r.params_after:,} | "
                  f"{r.macs_per_token_before:,.0f} -> {r.macs_per_token_after:,.0f} | {kv} | {module} | {saved} | {diff} |",
                  flush=True)


if __name__ == "__main__":
    main()
