"""Expert pruning fidelity: 1 of 4 experts removed from every MoE layer of a small random Mixtral, chosen by the
router score (graphprune.experts.RouterLoad, per layer and shared) or at random, vs the dense model.

    PYTHONPATH=. python bench/moe_experts.py [--seeds 10] [--init-std 0.1]

The model: bench/hf_families.py's Mixtral sizes (hidden 32, 2 layers, 4 experts top-2, MLP 64), random weights
drawn with std --init-std (transformers' default 0.02 leaves the experts' outputs too small to matter), one model
per seed. Calibration: 8 batches of 4 x 32 random token ids; held out: 8 other batches. Per seed and choice: the
mean over held-out tokens of KL(dense || pruned) of the next-token distributions and of the mean |logit
difference|; "random" averages 8 random draws of the removed experts per seed. Printed per choice: the mean over
seeds, the min-max over seeds, and in how many seeds it beats the random draws' average.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import transformers as T  # noqa: E402
from hf_families import FFN, HEADS, HIDDEN, KV_HEADS, LAYERS, VOCAB  # noqa: E402

from graphprune.experts import ExpertScore, RouterLoad, prune_experts  # noqa: E402


@dataclass(frozen=True)
class RandomExperts(ExpertScore):
    """Uniform random scores: a random choice of experts per layer."""

    seed: int

    def __call__(self, model, layers, calibration):
        rng = np.random.default_rng(self.seed)
        return [rng.random(layer.count) for layer in layers]


def mixtral(init_std: float) -> torch.nn.Module:
    return T.MixtralForCausalLM(T.MixtralConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, intermediate_size=FFN, max_position_embeddings=64, num_local_experts=4,
        num_experts_per_tok=2, initializer_range=init_std)).eval()


def token_batches(seed: int, count: int = 8, shape=(4, 32)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, shape, generator=g) for _ in range(count)]


def errors(dense, pruned, held_out) -> tuple[float, float]:
    """(mean KL(dense || pruned) per token, mean |logit difference|) over the held-out batches."""
    kl, diff, tokens = 0.0, 0.0, 0
    with torch.no_grad():
        for ids in held_out:
            p, q = dense(ids).logits.double(), pruned(ids).logits.double()
            log_p, log_q = p.log_softmax(-1), q.log_softmax(-1)
            kl += (log_p.exp() * (log_p - log_q)).sum(-1).sum().item()
            diff += (p - q).abs().mean(-1).sum().item()
            tokens += ids.numel()
    return kl / tokens, diff / tokens


def measure(seed: int, init_std: float, draws: int) -> dict[str, tuple[float, float]]:
    """choice -> (mean KL, mean |dlogit|) on one seed's model and held-out batches."""
    torch.manual_seed(seed)
    dense = mixtral(init_std)
    calibration = [(ids,) for ids in token_batches(1000 + seed)]
    held_out = token_batches(2000 + seed)
    choices = {"router load, per layer": dict(score=RouterLoad()),
               "router load, shared": dict(score=RouterLoad(), per_layer=False)}
    measured = {name: errors(dense, prune_experts(dense, n=1, calibration=calibration, **kw).model, held_out)
                for name, kw in choices.items()}
    randoms = [errors(dense, prune_experts(dense, n=1, calibration=calibration,
                                           score=RandomExperts(seed * draws + d)).model, held_out)
               for d in range(draws)]
    measured["random (mean of draws)"] = tuple(np.mean(randoms, axis=0))
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--init-std", type=float, default=0.1)
    parser.add_argument("--draws", type=int, default=8)
    args = parser.parse_args()
    rows: dict[str, list] = {}
    for seed in range(args.seeds):
        for name, value in measure(seed, args.init_std, args.draws).items():
            rows.setdefault(name, []).append(value)
    random_kl = np.array(rows["random (mean of draws)"])[:, 0]
    print(f"Mixtral (hidden {HIDDEN}, {LAYERS} layers, 4 -> 3 experts, top-2, init std {args.init_std}), "
          f"{args.seeds} seeds; held-out random tokens")
    print(f"{'choice':<24} {'mean KL':>10} {'KL min-max':>21} {'|dlogit|':>10} {'KL < random':>12}")
    for name, values in rows.items():
        kl, diff = np.array(values).T
        print(f"{name:<24} {kl.mean():>10.3e} {kl.min():>10.3e}-{kl.max():<10.3e} {diff.mean():>10.3e} "
              f"{int((kl < random_kl).sum()):>8}/{args.seeds}")


if __name__ == "__main__":
    main()
