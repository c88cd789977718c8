"""recover under `torchrun --nproc_per_node 2` (gloo, CPU): DDP averages gradients over ranks that read
disjoint shards, so two ranks with batches of 4 take the steps one process takes with batches of 8."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import graphprune
from recovery_ddp_worker import recover
from recovery_support import images, pruned

HERE = os.path.dirname(__file__)
TOLERANCE = dict(rtol=1e-4, atol=1e-5)  # float32 sums in another order (all-reduce vs one batch)


def _ranks(tmp_path, trainable: str) -> list[dict]:
    """Run the worker under torchrun with 2 processes; each rank's saved weights, losses and world size."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(HERE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(torchrun + [os.path.join(HERE, "recovery_ddp_worker.py"), str(tmp_path), trainable],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.parametrize("trainable", ["full", pytest.param("lora", marks=[pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="peft (the lora extra) is not installed")])])
def test_two_ranks_end_identical_and_agree_with_one_rank_on_the_same_global_batch(tmp_path, trainable):
    """All weights, or LoRA adapters merged back (only the adapters train, under DDP as in one process)."""
    ranks = _ranks(tmp_path, trainable)
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    for k, v in ranks[0]["state"].items():
        assert torch.equal(v, ranks[1]["state"][k]), k
    losses = ranks[0]["losses"]
    assert losses == ranks[1]["losses"] and losses[-1] < losses[0]

    shards = images(8, 4, seed=1)
    one_process = [torch.cat(shards[i:i + 2]) for i in range(0, 8, 2)]  # global batch k = rank 0's k + rank 1's k
    torch.set_num_threads(1)
    _, result = pruned(norm=False)
    single = recover(result, one_process, trainable)
    for k, v in single.model.state_dict().items():
        assert torch.allclose(v, ranks[0]["state"][k], **TOLERANCE), k
    changed = [k for k, v in single.model.state_dict().items() if not torch.equal(v, result.model.state_dict()[k])]
    if trainable == "lora":  # only the Linear head carries adapters; the convs keep their pruned weights
        assert changed == ["fc.weight"], changed
    else:
        assert len(changed) > 1
