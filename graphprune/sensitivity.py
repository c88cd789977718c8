"""Sensitivity analysis: prune each group alone at several ratios and evaluate a user metric.

The table says how much each group can lose before the metric drops; `ratios_for(max_drop)`
turns it into per-group ratios for prune_graph(ratio=0.0, ratios=...).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from .analysis import Analysis, analyse
from .atomic import write_atomically, write_json
from .errors import GraphPruneError, InputError
from .options import Strategy
from .planner import plan_local
from .runtimes.profiles import resolve_target
from .targets import Target


@dataclass(frozen=True)
class SensitivityRow:
    group: str
    channels: int
    ratio: float
    metric: float
    params_removed: int


@dataclass(frozen=True)
class SensitivityTable:
    baseline: float
    rows: tuple[SensitivityRow, ...]
    higher_is_better: bool = True

    def drop(self, row: SensitivityRow) -> float:
        return (self.baseline - row.metric) if self.higher_is_better else (row.metric - self.baseline)

    def ratios_for(self, max_drop: float) -> dict[str, float]:
        """Per group, the largest tested ratio whose metric drop is at most `max_drop` (0.0 if none is)."""
        out: dict[str, float] = {}
        for row in self.rows:
            out.setdefault(row.group, 0.0)
            if self.drop(row) <= max_drop:
                out[row.group] = max(out[row.group], row.ratio)
        return out

    def format_table(self) -> str:
        ratios = sorted({r.ratio for r in self.rows})
        lines = [f"baseline metric {self.baseline:.4f}",
                 f"{'group':32s}{'size':>6s}" + "".join(f"{f'r={r:g}':>10s}" for r in ratios)]
        for gid in dict.fromkeys(r.group for r in self.rows):
            cells = {r.ratio: r for r in self.rows if r.group == gid}
            size = next(iter(cells.values())).channels
            lines.append(f"{gid[:32]:32s}{size:6d}" + "".join(f"{cells[r].metric:10.4f}" if r in cells else f"{'':10s}"
                                                              for r in ratios))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"baseline": self.baseline, "higher_is_better": self.higher_is_better, "rows": [asdict(r) for r in self.rows]}

    def write_json(self, path: str) -> None:
        write_json(path, self.to_json())

    def plot(self, path: str) -> None:
        """Metric against ratio, one line per group (PNG)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise GraphPruneError("plotting needs matplotlib: pip install matplotlib") from exc
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for gid in dict.fromkeys(r.group for r in self.rows):
            rows = sorted((r for r in self.rows if r.group == gid), key=lambda r: r.ratio)
            ax.plot([r.ratio for r in rows], [r.metric for r in rows], marker="o", label=gid[:24])
        ax.axhline(self.baseline, color="black", linestyle="--", linewidth=1, label="unpruned")
        ax.set_xlabel("share of the group's channels removed")
        ax.set_ylabel("metric")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        try:
            write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=120))
        finally:
            plt.close(fig)


def sensitivity(model: torch.nn.Module | Analysis, example_inputs, metric: Callable[[torch.nn.Module], float], *,
                ratios: Sequence[float] = (0.25, 0.5, 0.75), importance="l2", groups: Sequence[str] | None = None,
                higher_is_better: bool = True, target: str | Target = "auto") -> SensitivityTable:
    """Prune each prunable group (or the listed group ids) alone at each ratio; `metric(pruned_model)` scores it.

    `model` is an nn.Module (traced once here) or an existing Analysis (then `example_inputs`
    is not used and may be None): every pruned variant is rewritten from that one trace. An nn.Module is
    analysed with `target`'s grouped-convolution mode (prune_graph's default target "auto", as there), so the
    table's group ids are those prune_graph's `ratios` take.
    """
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise InputError(f"ratios must be numbers in (0, 1), got {ratios!r}")
    analysis = model if isinstance(model, Analysis) else analyse(
        model, example_inputs, grouped_convs=resolve_target(target).grouped_convs)
    graph = analysis.dependencies
    chosen = [g for g in graph.prunable if groups is None or g.id in groups]
    if groups is not None and len(chosen) != len(set(groups)):
        unknown = sorted(set(groups) - {g.id for g in chosen})
        raise InputError(f"sensitivity: {unknown} are not prunable groups; see `graphprune explain`")
    scores = analysis.scores(Strategy(importance), groups=chosen)
    baseline = float(metric(analysis.model))
    rows = []
    for g in chosen:
        for r in ratios:
            planned = plan_local(graph, scores, {g.id: r})
            if g.id not in planned.plan.keep:
                continue
            result = analysis.apply(planned.plan)
            rows.append(SensitivityRow(g.id, g.size, float(r), float(metric(result.model)),
                                       result.report.params_before - result.report.params_after))
    return SensitivityTable(baseline, tuple(rows), higher_is_better)
