"""Helpers the checkpoint tests share: calibration token ids, the tensors a written directory holds, a disk that
fills up while shards are written."""
import errno
import os

import torch

from graphprune.checkpoint import write


def calibration_batches():
    """Three (2, 8) batches of token ids below 64, the same on every call."""
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 64, (2, 8), generator=g) for _ in range(3)]


def stored_tensors(directory) -> dict:
    """Every tensor of the safetensors files in `directory`, by key."""
    from safetensors.torch import load_file

    return {k: v for n in sorted(os.listdir(directory)) if n.endswith(".safetensors")
            for k, v in load_file(os.path.join(directory, n)).items()}


def disk_fills_after(monkeypatch, tensors: int) -> list:
    """Writing the tensor after the first `tensors` raises ENOSPC, as a full filesystem does; returns the list
    that gets one entry per tensor write tried."""
    real, calls = write._raw, []

    def filling_up(tensor):
        calls.append(1)
        if len(calls) > tensors:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensor)

    monkeypatch.setattr(write, "_raw", filling_up)
    return calls
