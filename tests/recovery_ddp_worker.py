"""Run by tests/test_recovery_distributed.py under `torchrun --nproc_per_node 2`: each rank recovers the same
pruned model on the same data list (recover shards it) and saves its final weights to OUT/rank{RANK}.pt."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from recovery_support import images, pruned  # noqa: E402

import graphprune  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    _, result = pruned(norm=False)
    recovered = graphprune.recover(result, data=images(8, 4, seed=1), steps=4, lr=1e-2, device="cpu",
                                   losses=graphprune.Losses(features=0.0), progress=False)
    state = {k: v.detach().clone() for k, v in recovered.model.state_dict().items()}
    torch.save({"state": state, "losses": [h.loss for h in recovered.history], "world": recovered.world_size},
               os.path.join(out, f"rank{os.environ['RANK']}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
