"""graphprune: structured pruning as a torch.fx compiler pass."""
from .api import PruneResult, apply_plan, prune_graph
from .errors import GraphPruneError
from .planner import PrunePlan
from .rules import Rule, RuleTable, default_rules

__all__ = ["prune_graph", "apply_plan", "PruneResult", "PrunePlan", "GraphPruneError", "Rule", "RuleTable", "default_rules"]
