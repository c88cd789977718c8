"""graphprune: structured pruning as a torch.fx compiler pass."""
from .api import PruneResult, apply_plan, prune_graph
from .errors import GraphPruneError
from .iterative import IterativeResult, prune_iteratively
from .planner import PrunePlan
from .rules import Rule, RuleTable, default_rules
from .sensitivity import SensitivityTable, sensitivity

__all__ = ["prune_graph", "apply_plan", "prune_iteratively", "sensitivity", "PruneResult", "PrunePlan",
           "IterativeResult", "SensitivityTable", "GraphPruneError", "Rule", "RuleTable", "default_rules"]
