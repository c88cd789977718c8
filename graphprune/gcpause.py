"""paused_gc: Python's cyclic garbage collector off for the length of one call, the caller's setting restored.

A prune allocates ~10^5 container objects (fx nodes, their metadata, rule effects, plans) that are
alive until it returns: a collection during it traverses them and frees nothing, and the ones it
finds alive are promoted, so the graphs the caller drops afterwards (fx graphs are reference cycles)
wait for a full generation-2 collection instead of the next cheap young one. Measured
(bench/gc_pause.py, docs/benchmarks.md): 30 prunes of resnet56/resnet18/mobilenet_v2 in one process
spent about half as long in the collector (4 full collections -> 1) and 11-12% less time pruning.
The collection due when it is re-enabled runs inside the call. Memory freed by reference counting
(every tensor not in a cycle) is freed as before; `gc.collect()` still works inside.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator

__all__ = ["paused_gc"]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic collector inside the block; re-enable it on exit (an exception too) only if it was
    enabled on entry. Nothing is collected on exit: the next allocation triggers the collector as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
