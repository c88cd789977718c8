"""The batch dim (dim 0 of a graph's tensor inputs): which batch sizes a captured graph takes.

The torch.export frontend keeps the batch dim symbolic where the model allows it (see
frontends.torch_export.export_program); where it cannot, the graph is static on batch: it
takes the example's batch size only, and `BatchDim.static` says why. The fx frontend records
size() calls as nodes, so its graphs take any batch size unless the model's own code bakes one
(`x.view(1, -1)`), which only a run shows.

Invariant: a GraphModule made by a frontend carries its BatchDim in `gm.meta[BATCH_KEY]`
(copies of it keep it); a run of such a graph on calibration data of another batch size that
it cannot take ends in one InputError naming both sizes and the fix (`calibration_run`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from .errors import GraphPruneError, InputError, first_line

BATCH_KEY = "graphprune_batch"


@dataclass(frozen=True)
class BatchDim:
    """`size`: the example inputs' batch size (None when no tensor input has a dim); `static`: why the graph
    takes only that size, or "" when it takes any (as far as its capture shows)."""

    size: int | None
    static: str = ""


def batch_size(inputs) -> int | None:
    """Dim 0 of the first tensor among `inputs` (any pytree: a tuple, args and kwargs) that has a dim."""
    for leaf in tree_leaves(inputs):
        if isinstance(leaf, torch.Tensor) and leaf.ndim > 0:
            return int(leaf.shape[0])
    return None


def batch_dim(gm: torch.nn.Module) -> BatchDim:
    """The BatchDim a frontend recorded on `gm` (BatchDim(None) for a graph no frontend made)."""
    meta = getattr(gm, "meta", None) if isinstance(gm, fx.GraphModule) else None
    return (meta or {}).get(BATCH_KEY) or BatchDim(None)


def batch_mismatch(what: str, size: int, known: BatchDim, why: str) -> str:
    """The message for data of batch size `size` given to a graph that takes batch size `known.size` only."""
    return (f"{what} has batch size {size}, but the analysed graph takes batch size {known.size} only: {why}. "
            f"Fix: pass batches of batch size {known.size} (e.g. torch.split(x, {known.size}) of each input), or "
            "a model whose forward does not bake the batch size (x.flatten(1) or x.view(x.size(0), -1), "
            "not x.view(1, -1)), analysed again")


@contextmanager
def calibration_run(gm: torch.nn.Module, what: str, inputs: tuple) -> Iterator[None]:
    """Around a run of `gm` on calibration data `inputs` (`what` names it, e.g. "calibration batch 2"):
    a batch size the graph does not take is one InputError naming both sizes, before the run when the
    graph is known static on batch, else when the run fails."""
    known = batch_dim(gm)
    size = batch_size(inputs)
    differs = known.size is not None and size is not None and size != known.size
    if differs and known.static:
        raise InputError(batch_mismatch(what, size, known, known.static))
    try:
        yield
    except GraphPruneError:
        raise
    except Exception as exc:
        if not differs:
            raise
        why = (f"running it failed ({type(exc).__name__}: {first_line(exc)}), while the example inputs' batch size "
               "runs, so the model's code likely bakes the batch size")
        raise InputError(batch_mismatch(what, size, known, why)) from exc
