"""Rewriting passes (transformation). They follow torch.fx's PassBase protocol and run in its PassManager."""
from .base import GraphPass, PassResult
from .pipeline import Rewritten, rewrite_in_place
from .recalibrate import RecalibrateBatchNorm
from .shrink import EliminateDeadCode, ShrinkChannels, positions_kept_by_slot

__all__ = ["GraphPass", "PassResult", "ShrinkChannels", "EliminateDeadCode", "RecalibrateBatchNorm",
           "positions_kept_by_slot", "rewrite_in_place", "Rewritten"]
