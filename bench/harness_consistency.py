"""Is the ONNX Runtime harness consistent? Benchmark ONE file as two variants, "a" and "b".

Exports a ResNet-ish 10-layer CNN (stem + 4 basic blocks + classifier) at 1x3x224x224, then
benchmarks the same .onnx file as variants "a" and "b" in one run, for the CPU and the EDGE
profile, and prints each table and the p50 ratio b/a. Both variants are the same model, so
any departure of the ratio from 1.0 is harness noise (expected within 10%).

    python bench/harness_consistency.py [--warmup 10 --repeats 50 --rounds 5] [--json DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.nn as nn

try:
    import graphprune  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from graphprune.bench import CPU, EDGE, benchmark
from graphprune.export import export_onnx


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


class ResNet10(nn.Module):
    """conv7x7 stem, 4 basic blocks (64, 128, 256, 512), global pool, linear: 10 weight layers."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        self.blocks = nn.Sequential(
            BasicBlock(64, 64, 1), BasicBlock(64, 128, 2), BasicBlock(128, 256, 2),
            BasicBlock(256, 512, 2),
        )
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", metavar="DIR", help="also write one JSON report per profile")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "resnet10.onnx")
        result = export_onnx(ResNet10().eval(), torch.randn(1, 3, 224, 224), path)
        print(f"exported {os.path.basename(path)}: opset {result.opset}, "
              f"{result.file_bytes / 2**20:.1f} MB, max abs diff vs PyTorch {result.max_abs_diff:.2e}")
        for profile in (CPU, EDGE):
            report = benchmark({"a": path, "b": path}, profile, warmup=args.warmup,
                               repeats=args.repeats, rounds=args.rounds)
            a, b = report.rows
            print()
            print(report.format_table())
            print(f"[{profile.name}] p50 ratio b/a = {b.p50_ms / a.p50_ms:.3f} "
                  f"(same file twice; expected within 10% of 1.0)")
            if args.json:
                report.write_json(os.path.join(args.json, f"harness_consistency_{profile.name}.json"))


if __name__ == "__main__":
    main()
