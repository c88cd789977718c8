"""torchvision's Swin-T and Swin-V2-T (random init) pruned at ratio 0.5: parameters removed and ONNX Runtime parity.

    python bench/torchvision_swin.py [--models swin_t,swin_v2_t] [--ratio 0.5]

Needs torchvision (the ultralytics venv has it: `make .venv-ultralytics/.installed`, then
`.venv-ultralytics/bin/python bench/torchvision_swin.py`). Per model: `prune_graph(model, 1x3x224x224,
ratio, target="none")` with the defaults, the parameters before and after (counted on the pruned model itself),
the share removed, the seconds of the call, and the max |difference| between the pruned model in PyTorch and its
ONNX file in ONNX Runtime on the example input.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import graphprune
from graphprune.export import export_onnx
from graphprune.timing.harness import cpu_name


def row(name: str, ratio: float) -> str:
    models = __import__("torchvision.models", fromlist=["models"])
    torch.manual_seed(0)
    model = getattr(models, name)().eval()
    x = torch.randn(1, 3, 224, 224)
    start = time.perf_counter()
    result = graphprune.prune_graph(model, x, ratio=ratio, target="none")
    seconds = time.perf_counter() - start
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in result.model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        parity = export_onnx(result.model, x, Path(tmp) / f"{name}.onnx").max_abs_diff
    return f"| {name} | {ratio} | {before:,} -> {after:,} | {1 - after / before:.1%} | {parity:.1e} | {seconds:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="swin_t,swin_v2_t")
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    print(f"{cpu_name()}; torch {torch.__version__}")
    print("| model | ratio | params before -> after | removed | ORT max diff | prune s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        print(row(name, args.ratio), flush=True)


if __name__ == "__main__":
    main()
