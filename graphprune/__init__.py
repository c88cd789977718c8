"""graphprune: structured pruning as a compiler pass (see README "Architecture")."""
from .analysis import Analysis, PruneResult, analyse
from .api import apply_plan, prune_graph
from .checkpoint import prune_checkpoint, prune_checkpoint_layers
from .errors import GraphPruneError
from .iterative import IterativeResult, prune_iteratively
from .options import Budget, Calibration, MaxMacs, MaxParams, Ratio, Strategy
from .planner import PrunePlan
from .recovery import Checkpoints, Fidelity, LoRA, Losses, RecoveryResult, Schedule, fidelity, recover
from .rules import Rule, RuleTable, default_rules
from .sensitivity import SensitivityTable, sensitivity
from .targets import Target

__all__ = ["prune_graph", "apply_plan", "prune_checkpoint", "prune_checkpoint_layers", "analyse", "Analysis", "prune_iteratively", "sensitivity", "PruneResult",
           "PrunePlan", "IterativeResult", "SensitivityTable", "GraphPruneError", "Rule", "RuleTable", "default_rules",
           "Budget", "Ratio", "MaxParams", "MaxMacs", "Strategy", "Calibration", "Target",
           "recover", "RecoveryResult", "fidelity", "Fidelity", "Losses", "Schedule", "Checkpoints", "LoRA"]
