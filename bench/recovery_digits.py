"""Recovery on real data: a ResNet-8 trained on scikit-learn's digits, pruned to 30% of its MACs, recovered by
graphprune.recover with the task loss, logit distillation alone vs channel-matched features + logits.

Usage: python bench/recovery_digits.py [--epochs 15] [--recover-epochs 15] [--lr 2e-3] [--features 1.0]
           [--out out/recovery_digits.json] [--quick]

Protocol (CPU, 2 threads, seeded): data, model and training as in examples/digits_pruning.py (1,437 train /
360 test images at 16x16, SGD one-cycle, +-1 pixel shifts). Pruning: `prune_graph(model, x,
target_macs=0.3 * MACs, importance="taylor", scope="global", target="none", calibration=8 training batches,
loss_fn=cross entropy)`. Recovery, for each variant at equal steps and the same data order:
`graphprune.recover(result, data=<shifted, shuffled training batches of 64>, epochs=--recover-epochs,
lr=--lr, losses=Losses(features=0 or --features))`; the batches carry labels, so the task loss
(cross entropy, weight 1) is added to the KL of the logits (T = 2). Test accuracy and top-1 agreement
with the dense model are measured on the 360 test images. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import runpy
import os
import sys
import time
from types import SimpleNamespace

if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import graphprune  # noqa: E402
from graphprune.atomic import write_json  # noqa: E402
from graphprune.timing.harness import cpu_name  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example():
    """examples/digits_pruning.py as a namespace (its main() is not run)."""
    return SimpleNamespace(**runpy.run_path(os.path.join(ROOT, "examples", "digits_pruning.py")))


class ShiftedBatches:
    """Training batches of `size`, reshuffled and randomly shifted on every pass (seeded): a re-iterable."""

    def __init__(self, example, x, y, size: int, seed: int):
        self.example, self.x, self.y, self.size = example, x, y, size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        for xb, yb in self.example.batches(self.x, self.y, self.size, self.generator):
            yield self.example.shift(xb, self.generator), yb

    def __len__(self):
        return -(-len(self.x) // self.size)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--recover-epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--features", type=float, default=1.0, help="feature weight of the feature variant")
    p.add_argument("--macs", type=float, default=0.3, help="share of the dense MACs kept")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="out/recovery_digits.json")
    p.add_argument("--quick", action="store_true", help="1 training and 1 recovery epoch at 8x8 (tests)")
    args = p.parse_args(argv)
    size = 8 if args.quick else 16
    if args.quick:
        args.epochs, args.recover_epochs = 1, 1
    torch.set_num_threads(args.threads)
    ex = _example()
    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = ex.load_data(size, 0)
    model = ex.ResNet8()
    t0 = time.perf_counter()
    ex.train(model, x_tr, y_tr, args.epochs, 0.1, 0)
    dense_acc = ex.accuracy(model, x_te, y_te)
    print(f"CPU: {cpu_name()}, {args.threads} threads; torch {torch.__version__}")
    print(f"dense ResNet-8: test accuracy {100 * dense_acc:.2f}% (trained {args.epochs} epochs in "
          f"{time.perf_counter() - t0:.0f} s)")
    calibration = [b for _, b in zip(range(8), ex.batches(x_tr, y_tr, 64, torch.Generator().manual_seed(1)))]
    example = (x_tr[:1],)
    macs = graphprune.analyse(model, example).stats.macs
    result = graphprune.prune_graph(model, example, target_macs=int(args.macs * macs), importance="taylor",
                                    scope="global", target="none", calibration=calibration,
                                    loss_fn=lambda out, y: F.cross_entropy(out, y))
    rep = result.report
    test = [(x_te[i:i + 120], y_te[i:i + 120]) for i in range(0, len(x_te), 120)]
    rows = []
    header = ("| variant | MACs after | params after | acc pruned | acc recovered | dense acc | points vs dense "
              "| top-1 agreement | seconds |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(header)
    for name, weight in (("logits + task", 0.0), ("features + logits + task", args.features)):
        start = time.perf_counter()
        rec = graphprune.recover(result, data=ShiftedBatches(ex, x_tr, y_tr, 64, seed=2), epochs=args.recover_epochs,
                                 lr=args.lr, eval_data=test, losses=graphprune.Losses(features=weight),
                                 progress=False)
        row = {"variant": name, "features": weight, "macs_ratio": rep.macs_after / rep.macs_before,
               "params_ratio": rep.params_after / rep.params_before, "acc_pruned": rec.before.accuracy,
               "acc_recovered": rec.after.accuracy, "dense_acc": rec.after.dense_accuracy,
               "agreement": rec.after.top1_agreement, "matched_layers": list(rec.matched_layers),
               "steps": len(rec.history), "seconds": time.perf_counter() - start}
        rows.append(row)
        print(f"| {name} | {row['macs_ratio']:.3f} | {row['params_ratio']:.3f} | {100 * row['acc_pruned']:.2f}% | "
              f"{100 * row['acc_recovered']:.2f}% | {100 * row['dense_acc']:.2f}% | "
              f"{100 * (row['acc_recovered'] - row['dense_acc']):+.2f} | {row['agreement']:.4f} | "
              f"{row['seconds']:.0f} |", flush=True)
    print(f"{rows[0]['steps']} steps per variant (epochs {args.recover_epochs}, batch 64, lr {args.lr}); "
          f"matched layers: {', '.join(rows[1]['matched_layers'])}")
    out = {"cpu": cpu_name(), "dense_acc": dense_acc, "rows": rows, "args": vars(args)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
