"""Is the ONNX Runtime harness consistent? Benchmark ONE file as two variants, "a" and "b".

Exports the built-in ResNet-18 at 1x3x224x224, then benchmarks the same .onnx file as
variants "a" and "b" in one run, for the CPU and the EDGE profile, and prints each table
and the p50 ratio b/a. Both variants are the same model, so any departure of the ratio
from 1.0 is harness noise (expected within 10%).

    python bench/harness_consistency.py [--warmup 10 --repeats 50 --rounds 5] [--json DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile

from graphprune.timing import CPU, EDGE, benchmark
from graphprune.export import export_onnx
from graphprune.models import ZOO


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", metavar="DIR", help="also write one JSON report per profile")
    args = parser.parse_args(argv)

    spec = ZOO["resnet18"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "resnet18.onnx")
        result = export_onnx(spec.build(), spec.example_inputs(), path)
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
