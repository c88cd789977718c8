"""Streaming prune of Hugging Face safetensors checkpoints (issue 24): analysis on the meta device, magnitude
scores accumulated tensor by tensor from memory-mapped shards, pruned tensors written shard by shard; whole decoder layers removed by block influence (depth.py)."""
from .depth import CheckpointDepthResult, prune_checkpoint_layers
from .progress import ProgressEvent, Stage
from .prune import CheckpointResult, prune_checkpoint
from .source import Checkpoint, is_checkpoint_dir

__all__ = ["prune_checkpoint", "CheckpointResult", "prune_checkpoint_layers", "CheckpointDepthResult", "Checkpoint",
           "is_checkpoint_dir", "ProgressEvent", "Stage"]
