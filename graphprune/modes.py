"""Train/eval modes of a module tree: eval for the length of a block, then every module back in its own mode.

`module.train(mode)` puts one mode on the whole tree, but a model may hold mixed modes (a BatchNorm frozen in
eval mode inside a model that trains). Putting a tree back therefore means putting each module back: what
`modes_of` records, `restore_modes` restores, and `evaluating` does both around a block.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

__all__ = ["evaluating", "modes_of", "restore_modes"]

Modes = Sequence[tuple[torch.nn.Module, bool]]  # every module of a tree with its `training` flag, the root first


def _all_in(module: torch.nn.Module, training: bool) -> bool:
    """Every module of the tree is in mode `training` and none overrides Module.train (a walk with a list that
    reads one flag per module, stopping at the first that differs)."""
    stack, seen = [module], {id(module)}
    while stack:
        m = stack.pop()
        if m.training is not training or type(m).train is not torch.nn.Module.train:
            return False
        for child in m._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    return True


def modes_of(module: torch.nn.Module) -> Modes:
    """Each module of the tree (once, however often it is reached) with its mode, the root first."""
    return [(m, m.training) for m in module.modules()]


def restore_modes(modes: Modes) -> None:
    """Every module of `modes` back in its recorded mode. Where any differs, the root's `train` runs first (a
    module's own `train` override sees the mode it left), then each flag is set to what was recorded."""
    if all(m.training is training for m, training in modes):
        return
    root, training = modes[0]
    root.train(training)
    for m, mode in modes:
        m.training = mode


@contextlib.contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[None]:
    """`module` in eval mode inside the block; afterwards, after an exception too, every module in the mode it had.
    A tree in eval mode everywhere already is walked once, to find that out."""
    if _all_in(module, False):
        yield
        return
    modes = modes_of(module)
    module.train(False)
    try:
        yield
    finally:
        restore_modes(modes)
