"""Pruning criteria compared on real data (scikit-learn digits): a thin wrapper.

The script lives in examples/digits_pruning.py (protocol, flags and outputs are described
there); this entry point runs the same code so bench/ lists it with the other measurements.

Usage: python bench/digits_criteria.py [--out out/digits] [--epochs 15] [--finetune-epochs 3]
           [--criteria l1,l2,...] [--quick]
"""
from __future__ import annotations

import importlib.util
import os

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "digits_pruning.py")


def load():
    """The examples/digits_pruning.py module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("digits_pruning", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> dict:
    return load().main(argv)


if __name__ == "__main__":
    main()
