"""Real-data demonstration: prune a small ResNet trained on scikit-learn's digits to 50% of its MACs.

Usage:
    python examples/digits_pruning.py [--out out/digits] [--epochs 15] [--finetune-epochs 3]
        [--criteria l1,l2,bn_scale,taylor,activation,apoz,random,flops_l2] [--scopes local,global]
        [--quick]

Protocol (one run, CPU, 2 threads, everything seeded):

* Data: ``sklearn.datasets.load_digits`` (1797 8x8 grayscale images, 10 classes, shipped with
  scikit-learn, no download), pixels / 16, upsampled to 16x16 (bilinear), standardised with the
  training set's mean and std; an 80/20 stratified train/test split (seed 0).
* Model: ResNet-8 for 1x16x16 inputs: conv-BN-ReLU stem (32), three basic blocks of widths
  32, 64, 128 (the last two with stride 2 and a 1x1 conv-BN shortcut), global average pool,
  Linear(128, 10).
* Training: SGD (momentum 0.9, Nesterov, weight decay 5e-4), batch 64, ``--epochs`` epochs,
  one-cycle schedule (linear warm-up to ``--lr`` over the first 15% of steps, cosine down to 0),
  with a random +-1 pixel shift of the 16x16 images as the only augmentation.
* Pruning: for every criterion and scope, ``graphprune.prune_graph(model, x, target_macs=
  int(0.5 * macs_before), importance=criterion, scope=scope, target="none", calibration=
  8 batches of 64 training images, loss_fn=cross entropy)``. Three accuracies on the test set:
  (a) the pruned model as returned, (b) after ``RecalibrateBatchNorm`` on the same calibration
  batches (no training), (c) after fine-tuning (b) for ``--finetune-epochs`` epochs with the
  same recipe as training at ``--lr * --finetune-lr-scale``. Every criterion gets the same
  fine-tuning schedule and the same data order (the seed is reset before each run).
* int8 (``--no-int8`` skips it): the unpruned model and every fine-tuned pruned model are exported
  to ONNX (``export_onnx``, dynamic batch) and quantised to static QDQ int8 with
  ``graphprune.quantize.quantize_onnx`` calibrated on the same calibration batches (training
  images); both files are evaluated on the test set in ONNX Runtime, and the table gives the int8
  accuracy and its change in points against the fp32 ONNX file (goal: at most 0.5 points lost).
* Output: a table on stdout, ``<out>/digits_pruning.json`` and ``<out>/digits_pruning.png``
  (both written atomically). The best fine-tuned row is marked (ties: fewest MACs, then table order).

Runs in about 1-2 minutes on 2 cores. ``--quick`` (1 epoch, 1 fine-tune epoch, criteria l2 and
taylor, 8x8 images, 1 thread) only exercises the code path, for tests.

``bench/digits_criteria.py`` runs this same script.
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import math
import os
import shutil
import sys
import tempfile
import time

# Idle OpenMP threads sleep instead of spinning: with 2 threads on 2 cores shared with any other
# process, spinning makes training 10-20x slower. It only works before torch is imported (so this
# leaves the environment of a process that imported torch already, e.g. a test run, alone).
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

try:
    import graphprune
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import graphprune
from graphprune.atomic import write_atomically, write_json  # noqa: E402
from graphprune.export import export_onnx  # noqa: E402
from graphprune.passes import RecalibrateBatchNorm  # noqa: E402
from graphprune.quantize import quantize_onnx  # noqa: E402

CRITERIA = ("l1", "l2", "bn_scale", "taylor", "activation", "apoz", "random", "flops_l2")
SCOPES = ("local", "global")
MACS_FRACTION = 0.5
JSON_NAME = "digits_pruning.json"
PNG_NAME = "digits_pruning.png"


# ----------------------------------------------------------------------------- data

def load_data(size: int = 16, seed: int = 0):
    """(x_train, y_train, x_test, y_test): float32 N x 1 x size x size tensors, int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(images, digits.target, test_size=0.2, stratify=digits.target,
                                              random_state=seed)

    def to_tensor(a):
        x = torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(1)
        if size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x

    x_tr, x_te = to_tensor(x_tr), to_tensor(x_te)
    mean, std = x_tr.mean(), x_tr.std()
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return x_tr, torch.from_numpy(y_tr).long(), x_te, torch.from_numpy(y_te).long()


def batches(x, y, batch_size: int, generator: torch.Generator | None = None):
    """Mini-batches; shuffled with `generator` when one is given."""
    order = torch.randperm(len(x), generator=generator) if generator is not None else torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


def shift(x, generator: torch.Generator, pixels: int = 1):
    """Random translation by up to `pixels` in each direction, one per image, padded with the background value."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4, value=float(x.min()))
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, 1, h, w + 2 * pixels)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, 1, h, w)
    return out.gather(3, cols)


# ----------------------------------------------------------------------------- model

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    """Stem + three basic blocks (widths 32-64-128) + GAP + Linear: 8 weight layers on the main path."""

    def __init__(self, num_classes: int = 10, widths=(32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.layer1 = BasicBlock(widths[0], widths[0], 1)
        self.layer2 = BasicBlock(widths[0], widths[1], 2)
        self.layer3 = BasicBlock(widths[1], widths[2], 2)
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------- training

def train(model: nn.Module, x, y, epochs: int, lr: float, seed: int, batch_size: int = 64,
          weight_decay: float = 5e-4, warmup: float = 0.15) -> nn.Module:
    """SGD + Nesterov momentum, one-cycle LR (linear warm-up, cosine decay), +-1 pixel shifts. In place."""
    if epochs <= 0:
        return model
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    total = epochs * math.ceil(len(x) / batch_size)
    warm = max(1, int(warmup * total))

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    for _ in range(epochs):
        for xb, yb in batches(x, y, batch_size, gen):
            loss = F.cross_entropy(model(shift(xb, gen)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x, y, batch_size: int = 512) -> float:
    training = model.training
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches(x, y, batch_size))
    model.train(training)
    return correct / len(x)


def onnx_accuracy(path: str, x, y, batch_size: int = 512) -> float:
    """Test accuracy of an ONNX file in ONNX Runtime (CPU, 1 thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = sum(int((session.run(None, {name: xb.numpy()})[0].argmax(1) == yb.numpy()).sum())
                  for xb, yb in batches(x, y, batch_size))
    return correct / len(x)


def int8_accuracies(model: nn.Module, example, calibration, x, y, directory: str, name: str) -> dict:
    """fp32 ONNX and static int8 (QDQ) ONNX test accuracies of `model`; int8 calibrated on `calibration`."""
    fp32, int8 = os.path.join(directory, f"{name}.onnx"), os.path.join(directory, f"{name}.int8.onnx")
    export_onnx(model.eval(), example, fp32, dynamic_batch=True)
    quantize_onnx(fp32, int8, [xb for xb, _ in calibration])
    acc_fp32, acc_int8 = onnx_accuracy(fp32, x, y), onnx_accuracy(int8, x, y)
    return {"acc_onnx_fp32": acc_fp32, "acc_int8": acc_int8, "int8_delta_points": 100 * (acc_int8 - acc_fp32),
            "onnx_fp32_bytes": os.path.getsize(fp32), "onnx_int8_bytes": os.path.getsize(int8)}


# ----------------------------------------------------------------------------- output

def write_plot(path: str, result: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, base = result["rows"], result["unpruned"]["accuracy"]
    scopes = [s for s in SCOPES if any(r["scope"] == s for r in rows)]
    criteria = list(dict.fromkeys(r["criterion"] for r in rows))
    stages = (("acc_pruned", "pruned", "#d62728"), ("acc_bn_recal", "BN recalibrated", "#ff7f0e"),
              ("acc_finetuned", "fine-tuned", "#2ca02c"))
    fig, axes = plt.subplots(len(scopes), 1, figsize=(max(7.0, 1.2 * len(criteria) + 2), 3.4 * len(scopes) + 0.6),
                             squeeze=False, sharey=True)
    width = 0.26
    for ax, scope in zip(axes[:, 0], scopes):
        by_crit = {r["criterion"]: r for r in rows if r["scope"] == scope}
        xs = np.arange(len(criteria))
        for k, (key, label, color) in enumerate(stages):
            vals = [100 * by_crit[c][key] if c in by_crit else np.nan for c in criteria]
            bars = ax.bar(xs + (k - 1) * width, vals, width, label=label, color=color)
            for bar, v in zip(bars, vals):
                if not np.isnan(v):
                    inside = v > 30
                    ax.text(bar.get_x() + bar.get_width() / 2, v - 2 if inside else v + 2, f"{v:.2f}",
                            rotation=90, ha="center", va="top" if inside else "bottom", fontsize=7,
                            color="white" if inside else "black")
        ax.axhline(100 * base, color="k", ls="--", lw=1, label=f"unpruned ({100 * base:.2f}%)")
        ax.set_xticks(xs, criteria)
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"scope={scope}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"ResNet-8 on scikit-learn digits, pruned by graphprune to <= {int(100 * MACS_FRACTION)}% of the MACs")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    write_atomically(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)


def format_table(result: dict) -> str:
    int8 = all("acc_int8" in r for r in result["rows"])
    head = f"{'criterion':<11} {'scope':<7} {'MACs ratio':>10} {'params ratio':>12} {'acc pruned':>10} " \
           f"{'acc BN-recal':>12} {'acc fine-tuned':>14}" + (f" {'acc int8':>9} {'int8 pts':>8}" if int8 else "")
    lines = [head, "-" * len(head)]
    best = result["best"]
    for r in result["rows"]:
        mark = "  <- best" if (r["criterion"], r["scope"]) == (best["criterion"], best["scope"]) else ""
        lines.append(f"{r['criterion']:<11} {r['scope']:<7} {r['macs_ratio']:>10.3f} {r['params_ratio']:>12.3f} "
                     f"{100 * r['acc_pruned']:>9.2f}% {100 * r['acc_bn_recal']:>11.2f}% "
                     f"{100 * r['acc_finetuned']:>13.2f}%"
                     + (f" {100 * r['acc_int8']:>8.2f}% {r['int8_delta_points']:>+8.2f}" if int8 else "") + mark)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/digits", help="output directory (JSON + PNG)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 15; 1 with --quick)")
    p.add_argument("--finetune-epochs", type=int, default=None, help="fine-tune epochs (default 3; 1 with --quick)")
    p.add_argument("--criteria", default=None, help=f"comma-separated, from {','.join(CRITERIA)} (default all; "
                                                    "l2,taylor with --quick)")
    p.add_argument("--scopes", default=",".join(SCOPES), help="comma-separated, from local,global")
    p.add_argument("--lr", type=float, default=0.1, help="peak training learning rate")
    p.add_argument("--finetune-lr-scale", type=float, default=0.1, help="fine-tune peak LR = lr * this")
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--size", type=int, default=None, help="upsampled image side (default 16; 8 = native, "
                                                           "the --quick default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-int8", dest="int8", action="store_false",
                   help="skip the int8 rows (ONNX export + static QDQ quantisation, accuracy in ONNX Runtime)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 2; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny settings to exercise the code path (tests): 1 epoch, "
                   "1 fine-tune epoch, criteria l2,taylor, 8x8 images, 2 calibration batches, 1 thread")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 1 if args.quick else 15
    if args.threads is None:
        args.threads = 1 if args.quick else 2
    if args.size is None:
        args.size = 8 if args.quick else 16
    if args.finetune_epochs is None:
        args.finetune_epochs = 1 if args.quick else 3
    if args.criteria is None:
        args.criteria = "l2,taylor" if args.quick else ",".join(CRITERIA)
    args.criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    args.scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    if args.quick:
        args.calibration_batches = min(args.calibration_batches, 2)
    for c in args.criteria:
        if c not in CRITERIA:
            p.error(f"unknown criterion {c!r}; choose from {','.join(CRITERIA)}")
    for s in args.scopes:
        if s not in SCOPES:
            p.error(f"unknown scope {s!r}; choose from {','.join(SCOPES)}")
    return args


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)  # leave the caller's process as it was


def run(args) -> dict:
    t_start = time.perf_counter()
    seed_everything(args.seed)
    os.makedirs(args.out, exist_ok=True)

    x_tr, y_tr, x_te, y_te = load_data(args.size, args.seed)
    print(f"digits: {len(x_tr)} train / {len(x_te)} test images, 1x{args.size}x{args.size}, 10 classes")

    model = ResNet8()
    t0 = time.perf_counter()
    train(model, x_tr, y_tr, args.epochs, args.lr, args.seed)
    train_s = time.perf_counter() - t0
    base_acc = accuracy(model, x_te, y_te)

    example = (x_tr[:1],)
    cal_gen = torch.Generator().manual_seed(args.seed + 1)
    calibration = [b for _, b in zip(range(args.calibration_batches), batches(x_tr, y_tr, 64, cal_gen))]

    def loss_fn(out, y):
        return F.cross_entropy(out, y)

    # The unpruned model's MACs and parameters, as graphprune counts them (ratio 0 removes nothing).
    probe = graphprune.prune_graph(model, example, ratio=0.0, target="none").report
    macs_before, params_before = probe.macs_before, probe.params_before
    target_macs = int(MACS_FRACTION * macs_before)
    print(f"unpruned: {macs_before:,} MACs, {params_before:,} params, test accuracy {100 * base_acc:.2f}% "
          f"(trained {args.epochs} epochs in {train_s:.1f} s); target: <= {target_macs:,} MACs\n")

    work = tempfile.mkdtemp(prefix="digits-int8-")
    unpruned_int8 = int8_accuracies(model, example, calibration, x_te, y_te, work, "unpruned") if args.int8 else {}
    if unpruned_int8:
        print(f"unpruned int8 (QDQ, ONNX Runtime): {100 * unpruned_int8['acc_int8']:.2f}% vs fp32 ONNX "
              f"{100 * unpruned_int8['acc_onnx_fp32']:.2f}% ({unpruned_int8['int8_delta_points']:+.2f} points)\n")
    rows = []
    for criterion in args.criteria:
        for scope in args.scopes:
            seed_everything(args.seed)
            t0 = time.perf_counter()
            r = graphprune.prune_graph(model, example, target_macs=target_macs, importance=criterion, scope=scope,
                                       target="none", calibration=calibration, loss_fn=loss_fn)
            prune_s = time.perf_counter() - t0
            rep = r.report
            assert rep.macs_before == macs_before and rep.params_before == params_before
            pruned = r.model.eval()
            acc_pruned = accuracy(pruned, x_te, y_te)
            recal = copy.deepcopy(pruned)
            RecalibrateBatchNorm(example, calibration)(recal)
            acc_recal = accuracy(recal, x_te, y_te)
            t0 = time.perf_counter()
            train(recal, x_tr, y_tr, args.finetune_epochs, args.lr * args.finetune_lr_scale, args.seed)
            finetune_s = time.perf_counter() - t0
            acc_ft = accuracy(recal, x_te, y_te)
            row = {"criterion": criterion, "scope": scope,
                   "macs_after": rep.macs_after, "params_after": rep.params_after,
                   "macs_ratio": rep.macs_after / rep.macs_before, "params_ratio": rep.params_after / rep.params_before,
                   "acc_pruned": acc_pruned, "acc_bn_recal": acc_recal, "acc_finetuned": acc_ft,
                   "prune_s": prune_s, "finetune_s": finetune_s}
            if args.int8:
                row.update(int8_accuracies(recal, example, calibration, x_te, y_te, work, f"{criterion}-{scope}"))
            rows.append(row)
            print(f"  {criterion:<10} {scope:<6} MACs x{row['macs_ratio']:.3f} params x{row['params_ratio']:.3f}  "
                  f"acc {100 * acc_pruned:6.2f}% -> {100 * acc_recal:6.2f}% -> {100 * acc_ft:6.2f}%  "
                  f"(prune {prune_s:.1f} s, fine-tune {finetune_s:.1f} s)", flush=True)

    best = max(rows, key=lambda r: (r["acc_finetuned"], -r["macs_ratio"]))
    result = {
        "config": {k: v for k, v in vars(args).items()},
        "macs_fraction": MACS_FRACTION,
        "unpruned": {"accuracy": base_acc, "macs": macs_before, "params": params_before, "train_s": train_s,
                     **unpruned_int8},
        "rows": rows,
        "best": {"criterion": best["criterion"], "scope": best["scope"], "acc_finetuned": best["acc_finetuned"],
                 "delta_points": 100 * (best["acc_finetuned"] - base_acc)},  # > 0: better than unpruned
        "elapsed_s": None,  # the whole run, set before the JSON is written
        "versions": {d: _version(d) for d in ("torch", "graphprune", "scikit-learn")},
    }
    print(f"\nunpruned test accuracy: {100 * base_acc:.2f}% ({macs_before:,} MACs, {params_before:,} params); "
          f"pruned to <= {int(100 * MACS_FRACTION)}% of the MACs:\n")
    print(format_table(result))
    delta = result["best"]["delta_points"]
    ties = [f"{r['criterion']}/{r['scope']}" for r in rows
            if r is not best and r["acc_finetuned"] == best["acc_finetuned"]]
    print(f"\nbest fine-tuned: {best['criterion']} / {best['scope']}: {100 * best['acc_finetuned']:.2f}%, "
          f"{delta:+.2f} points vs the unpruned "
          f"{100 * base_acc:.2f}%" + (f" (tied with {', '.join(ties)}; ties go to the fewest MACs, then table order)"
                                      if ties else ""))
    if args.int8:
        worst = min(rows, key=lambda r: r["int8_delta_points"])
        print(f"int8 vs fp32 ONNX, worst row: {worst['criterion']} / {worst['scope']}: "
              f"{worst['int8_delta_points']:+.2f} points ({100 * worst['acc_onnx_fp32']:.2f}% -> "
              f"{100 * worst['acc_int8']:.2f}%); files {worst['onnx_fp32_bytes']:,} -> {worst['onnx_int8_bytes']:,} bytes")
    shutil.rmtree(work, ignore_errors=True)
    json_path, png_path = os.path.join(args.out, JSON_NAME), os.path.join(args.out, PNG_NAME)
    write_plot(png_path, result)
    result["elapsed_s"] = time.perf_counter() - t_start
    write_json(json_path, result)
    print(f"wrote {json_path} and {png_path}")
    print(f"elapsed: {result['elapsed_s']:.1f} s")
    return result


if __name__ == "__main__":
    main()
