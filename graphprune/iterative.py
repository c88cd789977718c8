"""Iterative pruning: alternate prune and a user fine-tune, growing the pruning to the target over N steps.

With `ratio` r, every step removes the share 1 - (1 - r)^(1/N) of each group of the
current model, so N steps leave (1 - r) of the channels. With `target_params` or
`target_macs` T, step k prunes the current model to M0 * (T / M0)^(k/N), M0 the
original count, so the last step lands on T.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .analysis import PruneResult, analyse
from .api import prune_graph
from .errors import InputError
from .options import check_ratio
from .report import count_params
from .runtimes.profiles import resolve_target


@dataclass(frozen=True)
class IterativeResult:
    model: torch.nn.Module
    steps: tuple[PruneResult, ...]  # every step's result: its plan (on the previous step's model) and report

    @property
    def plans(self):
        return tuple(s.plan for s in self.steps)


def prune_iteratively(model: torch.nn.Module, example_inputs, *, steps: int,
                      finetune: Callable[[torch.nn.Module, int], torch.nn.Module | None] | None = None,
                      recover: Callable[[PruneResult, int], torch.nn.Module] | None = None,
                      ratio: float | None = None, target_params: int | None = None, target_macs: int | None = None,
                      **prune_kwargs) -> IterativeResult:
    """Prune in `steps` steps; after each, `recover(result, step)` returns the recovered model (e.g.
    `graphprune.recover(result, data=...).model`, distilled from that step's dense model), and
    `finetune(model, step)` may train the model (in place or returning a new one).

    Other keyword arguments go to prune_graph on every step; `target`/`round_to` are resolved once, so every
    step uses the same Target. `model` is not modified.
    """
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive int, got {steps!r}")
    given = [v for v in (ratio, target_params, target_macs) if v is not None]
    if len(given) != 1:
        raise InputError("give exactly one of ratio, target_params, target_macs")
    prune_kwargs["target"] = resolve_target(prune_kwargs.get("target", "auto"), prune_kwargs.pop("round_to", None))
    results, current = [], model
    first = None
    for k in range(1, steps + 1):
        if ratio is not None:
            amount = {"ratio": 1.0 - (1.0 - check_ratio(ratio)) ** (1.0 / steps)}
        else:
            which = "target_params" if target_params is not None else "target_macs"
            goal = target_params if target_params is not None else target_macs
            if first is None:
                first = analyse(model, example_inputs, rules=prune_kwargs.get("rules")).stats
            start = first.params if target_params is not None else first.macs
            amount = {which: int(start * (goal / start) ** (k / steps))}
            now = count_params(current) if target_params is not None else (results[-1].report.macs_after if results else start)
            if amount[which] >= now:
                continue  # this step's target is already met
        result = prune_graph(current, example_inputs, **amount, **prune_kwargs)
        results.append(result)
        current = result.model if recover is None else recover(result, k)
        if finetune is not None:
            tuned = finetune(current, k)
            current = tuned if tuned is not None else current
    return IterativeResult(current, tuple(results))
