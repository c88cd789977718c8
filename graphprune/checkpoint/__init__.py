"""Streaming prune of Hugging Face safetensors checkpoints (issue 24): analysis on the meta device, magnitude
scores accumulated tensor by tensor from memory-mapped shards, pruned tensors written shard by shard."""
from .prune import CheckpointResult, prune_checkpoint
from .source import Checkpoint, is_checkpoint_dir

__all__ = ["prune_checkpoint", "CheckpointResult", "Checkpoint", "is_checkpoint_dir"]
