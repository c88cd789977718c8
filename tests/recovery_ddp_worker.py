"""Run by tests/test_recovery_distributed.py under `torchrun --nproc_per_node 2`: each rank recovers the same
pruned model on the same data list (recover shards it) and saves its final weights to OUT/rank{RANK}.pt.
`python recovery_ddp_worker.py OUT [full|lora]`: all weights train, or low-rank adapters (merged back)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from recovery_support import images, pruned  # noqa: E402

import graphprune  # noqa: E402


def recover(result, data, trainable: str):
    """The recovery both the ranks and the one-process reference run."""
    lora = {"trainable": "lora", "lora": graphprune.LoRA(rank=2)} if trainable == "lora" else {}
    return graphprune.recover(result, data=data, steps=4, lr=1e-2, device="cpu",
                              losses=graphprune.Losses(features=0.0), progress=False, **lora)


def main(out: str, trainable: str) -> None:
    torch.set_num_threads(1)
    _, result = pruned(norm=False)
    recovered = recover(result, images(8, 4, seed=1), trainable)
    state = {k: v.detach().clone() for k, v in recovered.model.state_dict().items()}
    torch.save({"state": state, "losses": [h.loss for h in recovered.history], "world": recovered.world_size},
               os.path.join(out, f"rank{os.environ['RANK']}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "full")
