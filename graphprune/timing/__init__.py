"""Timing model files in a runtime: the harness (harness.py, its child process child.py) and multi-runtime runs
(matrix.py). The repository's bench/ folder holds the scripts that print the benchmark tables with it."""
from .harness import (CPU, EDGE, GRAPH_OPTIMIZATION_LEVELS, BenchReport, BenchRow, Profile, benchmark, cpu_name,
                      pinned, session_options)
from .matrix import benchmark_models, plot_latency_vs_macs, variant_name
from ..runtimes.kinds import Precision, Runtime

__all__ = ["Profile", "CPU", "EDGE", "GRAPH_OPTIMIZATION_LEVELS", "BenchRow", "BenchReport", "benchmark",
           "benchmark_models", "plot_latency_vs_macs", "variant_name", "cpu_name", "session_options", "pinned",
           "Runtime", "Precision"]
