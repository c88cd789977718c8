"""The recovery stage: distillation from the dense model, and fidelity measured (see recovery.stage)."""
from .batches import Batch, Batches
from .engine import StepLog
from .fidelity import Fidelity, fidelity
from .losses import Losses, OutputLoss
from .options import BatchNormMode, Checkpoints, LoRA, Schedule, Trainable
from .stage import RecoveryResult, recover

__all__ = ["recover", "RecoveryResult", "fidelity", "Fidelity", "Losses", "OutputLoss", "Schedule", "Checkpoints",
           "BatchNormMode", "Trainable", "LoRA", "StepLog", "Batch", "Batches"]
