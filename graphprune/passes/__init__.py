"""Rewriting passes (transformation). They follow torch.fx's PassBase protocol and run in its PassManager."""
from .base import GraphPass, PassResult
from .recalibrate import RecalibrateBatchNorm
from .shrink import EliminateDeadCode, ShrinkChannels, kept_positions

__all__ = ["GraphPass", "PassResult", "ShrinkChannels", "EliminateDeadCode", "RecalibrateBatchNorm", "kept_positions"]
