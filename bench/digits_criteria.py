"""Pruning criteria compared on real data (scikit-learn digits): a thin wrapper.

The script lives in examples/digits_pruning.py (protocol, flags and outputs are described
there); this entry point runs it unchanged so bench/ lists it with the other measurements.

Usage: python bench/digits_criteria.py [--out out/digits] [--epochs 15] [--finetune-epochs 3]
           [--criteria l1,l2,...] [--quick]
"""
import os
import runpy

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runpy.run_path(os.path.join(root, "examples", "digits_pruning.py"), run_name="__main__")
