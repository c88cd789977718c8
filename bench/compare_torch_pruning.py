"""Side-by-side comparison of graphprune and Torch-Pruning 1.6.1 on the built-in models.

Usage:
    python bench/compare_torch_pruning.py [--models a,b,c] [--skip-latency]
        [--warmup 3 --repeats 10 --rounds 2] [--tp-timeout 300] [--json out/compare_tp.json]
        [--prune-repeats 3] [--torch-threads 1] [--target auto|none|...]

Protocol (one run of this script, every model of ``--models``, default the whole zoo):

* Model and inputs: ``ZOO[name].build()`` (eval mode, seeded weights) and
  ``ZOO[name].example_inputs()`` (batch 1), or one of ``GROUPED_EXTRA`` (larger ResNeXt/RegNet-Y shapes,
  given by name). Both tools prune a fresh copy of the same model.
* Pruning: ratio 0.5, L2 magnitude importance, local (per group) ranking, once without
  rounding and once with ``round_to=16`` for both tools:
  - graphprune: ``graphprune.prune_graph(model, inputs, ratio=0.5, importance="l2",
    round_to=1 | 16, target=--target)``; round_to is always explicit (``None``, the default, lets
    graphprune pick a per-device channel step). ``--target none`` frees every layer kind of a
    channel step, so grouped convolutions are pruned inside every group (Torch-Pruning's way);
    the default ``auto`` may prune them by whole groups. Output shapes are kept by graphprune
    itself, nothing is ignored.
  - Torch-Pruning: ``tp.pruner.MetaPruner(model, inputs, importance=
    tp.importance.MagnitudeImportance(p=2)`` (group reduction "mean", its default),
    ``pruning_ratio=0.5, global_pruning=False, round_to=None | 16, ignored_layers=[...])``
    then ``pruner.step()``. ``ignored_layers`` are the output layers: every Conv/Linear/
    MultiheadAttention whose output reaches a model output without passing through another
    such layer (found by walking the torch.fx graph back from the outputs: the classifier,
    UNet's final conv, the three YOLO prediction convs). For models with
    ``nn.MultiheadAttention`` it also gets ``num_heads={mha: mha.num_heads},
    prune_num_heads=True, head_pruning_ratio=0.5``; the notes say what it did to each MHA.
    (Observed with 1.6.1: its head pruning is written for qkv Linear layers; with an
    ``nn.MultiheadAttention`` in ``num_heads`` the residual-width group is skipped, so the
    attention modules and the embedding width stay as they are and only the MLP hidden
    width is pruned. Without ``num_heads`` it prunes the embedding width, but the ViT then
    fails in ``forward`` because ``VisionTransformer.hidden_dim`` is a plain attribute.)
* "prune s" (wall clock, ``time.perf_counter``, the median of ``--prune-repeats`` runs, three by
  default, as in the issue that set the speed goal). Both tools run with ``--torch-threads``
  intra-op threads (default 1): their work is
  small forward passes plus Python, and on a small shared machine multi-threaded torch made
  the same call 3-30x slower at random (mobilenet_v2: 0.5-4.6 s with 2 threads on 2 cores
  vs a steady 0.17 s with 1), which would swamp the comparison.
  - graphprune: the whole ``prune_graph`` call (deep copy, trace, analysis, scoring,
    planning, rewrite, final checks, report).
  - Torch-Pruning: pruner construction (dependency-graph build) + ``step()``.
  Each tool is timed in its own worker process (Torch-Pruning can run out of memory or hang;
  a job that does not answer within ``--tp-timeout`` seconds kills the worker), after one
  warm-up prune of a tiny model there (so import and first-call costs are excluded); every
  run prunes a freshly built model (built outside the timer), after a full collection of the cyclic garbage
  collector (``gc.collect()``, outside the timer): a run's time is its own prune, not the freeing of earlier
  jobs' garbage. graphprune's results hold fx graphs, reference cycles that only the collector frees, with
  the pruned weights; without this collection, one of its later runs paid for freeing them (measured: a
  generation-1 collection of 48 ms in a resnet56 run after the ResNet-50s' jobs; one of 22 ms in a
  wide_resnet50_2 run that freed 17,333 objects of earlier results; RSS 1,380 MB before that run, 1,262 after), while Torch-Pruning's pruned
  modules are freed by reference counting when their job ends. The two tools' runs ALTERNATE,
  the order swapped every round: on a shared machine a slow spell (measured here: the same
  call 1.6x slower for minutes) then hits both tools alike instead of one. A failure, crash
  or timeout is reported as ``FAIL (<reason>)`` and the run goes on. graphprune's pruned
  model for the checks below comes from one more, untimed, call in this process. Each worker
  logs the cyclic garbage collector's collections (``gc.callbacks``): the JSON keeps every
  timed run's (``prune_gc``), and the notes name each run that contained a full (generation 2)
  collection, whose cost is the worker's whole heap wherever in its sequence of jobs it falls due
  (before the collection between jobs, at least one graphprune or Torch-Pruning run of 73-161 ms held one).
* Params / MACs: the same counter for every variant: ``count_params(model)`` and
  ``count_macs`` of a graphprune trace of a deep copy with values recorded on the example
  inputs. (graphprune's own report is cross-checked against it; mismatches are noted.)
* ONNX: ``graphprune.export.export_onnx`` (opset 17; ``onnx.checker``; ONNX Runtime vs
  PyTorch on the example inputs, atol 1e-4 + rtol 1e-3). "yes (d)" means the file was
  written and ORT matched the pruned PyTorch model, d = max abs difference.
* Latency: ONE ``graphprune.timing.benchmark`` call per model with every variant that
  exported (original, gp, tp, gp16, tp16), so their runs are interleaved, under the EDGE
  profile (1 intra-op thread, pinned to one core, ORT_ENABLE_ALL). p50 over
  ``--repeats`` timed runs split over ``--rounds`` rotating rounds after ``--warmup``
  warm-up runs per variant.

The pruned Torch-Pruning model travels from its worker to this process as a full pickle
(``torch.save(model)``) in a private temporary directory; only those files, written by
this script's own worker, are loaded with ``torch.load(weights_only=False)``.
"""
from __future__ import annotations

import argparse
import copy
import gc
import importlib
import importlib.metadata
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

import graphprune
from graphprune import default_rules, timing
from graphprune.export import export_onnx
from graphprune.models import ZOO, ModelSpec
from graphprune.models.regnet import RegNet
from graphprune.models.resnet import Bottleneck, ResNet
from graphprune.cost import count_macs
from graphprune.report import count_params
from graphprune.rules.attention import PrunedMultiheadAttention
from graphprune.trace import record_values, trace

TP_VERSION = "1.6.1"
RATIO = 0.5
ROUNDINGS = (None, 16)  # None: no rounding (graphprune round_to=1, Torch-Pruning round_to=None)
OUTPUT_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)
SHORT = 60  # characters of a reason shown in the table; the notes and the JSON keep it all


def _regnet_y(depths, widths, group_width):
    return lambda: RegNet(depths, widths, group_width=group_width, bottleneck_multiplier=1.0, se_ratio=0.25,
                          stem_width=32)


GROUPED_EXTRA = {  # larger grouped-conv models (torchvision's shapes), by name only: not in the default run
    "resnext101_32x8d": ModelSpec("resnext101_32x8d", lambda: ResNet(Bottleneck, [3, 4, 23, 3], groups=32,
                                                                     width_per_group=8), (1, 3, 224, 224)),
    "regnet_y_800mf": ModelSpec("regnet_y_800mf", _regnet_y((1, 3, 8, 2), (64, 144, 320, 784), 16), (1, 3, 224, 224)),
    "regnet_y_1_6gf": ModelSpec("regnet_y_1_6gf", _regnet_y((2, 6, 17, 2), (48, 120, 336, 888), 24), (1, 3, 224, 224)),
    "regnet_y_3_2gf": ModelSpec("regnet_y_3_2gf", _regnet_y((2, 5, 13, 1), (72, 216, 576, 1512), 24),
                                (1, 3, 224, 224)),
}
MODELS = {**ZOO, **GROUPED_EXTRA}


# ----------------------------------------------------------------------------- results


@dataclass
class Variant:
    """One model variant: the original or the output of one tool at one rounding setting."""

    key: str  # "original", "gp", "tp", "gp16", "tp16": the name in the latency benchmark
    tool: str  # "original", "graphprune" or "torch-pruning"
    round_to: int | None
    prune_s: float | None = None  # median of prune_runs
    prune_runs: list[float] = field(default_factory=list)
    prune_gc: list[list] = field(default_factory=list)  # per run: [generation, ms] of each garbage collection in it
    params: int | None = None
    macs: int | None = None
    p50_ms: float | None = None
    onnx_ok: bool | None = None  # None: not tried (pruning failed)
    max_abs_diff: float | None = None
    fail: str | None = None  # pruning failed / timed out / the pruned model does not run
    export_error: str | None = None
    latency_error: str | None = None
    onnx_path: str | None = field(default=None, repr=False)


@dataclass
class ModelResult:
    name: str
    variants: list[Variant]
    ignored_for_tp: list[str]
    notes: list[str]
    error: str | None = None  # the whole model failed (should not happen; reported, run goes on)

    def get(self, key: str) -> Variant | None:
        return next((v for v in self.variants if v.key == key), None)


def full_collections(v: Variant) -> list[str]:
    """A note per timed run of `v` that contained full (generation 2) garbage collections: their cost is the whole
    interpreter's heap, wherever in the worker's sequence of jobs they fall due."""
    notes = []
    for i, (seconds, collections) in enumerate(zip(v.prune_runs, v.prune_gc)):
        full = [ms for generation, ms in collections if generation == 2]
        if full:
            what = "a full garbage collection" if len(full) == 1 else f"{len(full)} full garbage collections"
            notes.append(f"{v.key}: run {i + 1} ({seconds * 1e3:.1f} ms) contained {what}, {sum(full):.1f} ms")
    return notes


def variant_key(tool: str, round_to: int | None) -> str:
    return ("gp" if tool == "graphprune" else "tp") + (str(round_to) if round_to else "")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def short(text: str, n: int = SHORT) -> str:
    text = one_line(text)
    return text if len(text) <= n else text[: n - 3] + "..."


def describe(exc: BaseException) -> str:
    return one_line(f"{type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------- shared helpers


def tiny_model() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The warm-up model for both tools (conv-BN-ReLU x2, pool, linear)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    ).eval()
    return model, (torch.randn(1, 3, 16, 16),)


def output_layers(model: nn.Module) -> list[str]:
    """Qualified names of the Conv/Linear/MHA modules whose outputs reach a model output directly.

    Walks the torch.fx graph back from the output node, stopping at such modules: these are the
    layers whose output channels must be kept (the classifier, a segmentation/detection head).
    """
    gm = trace(copy.deepcopy(model))
    modules = dict(gm.named_modules())
    output = next(n for n in gm.graph.nodes if n.op == "output")
    stack, seen, found = list(output.all_input_nodes), set(), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and isinstance(modules[node.target], OUTPUT_LAYER_TYPES):
            found.add(node.target)
            continue
        stack.extend(node.all_input_nodes)
    order = [name for name, _ in model.named_modules()]
    return sorted(found, key=order.index)


def measure(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """(params, MACs) of any model with graphprune's counter.

    Modules that have a rule stay leaves, as in prune_graph, and so does graphprune's
    PrunedMultiheadAttention: the counter prices a whole attention module, but traced through
    it would see F.scaled_dot_product_attention, which it does not count.
    """
    rules = default_rules()
    gm = trace(copy.deepcopy(model),
               lambda m: rules.has_module_rule(m) or isinstance(m, PrunedMultiheadAttention))
    gm.eval()
    record_values(gm, inputs)
    return count_params(model), count_macs(gm, default_rules())


def output_shapes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[tuple[int, ...]]:
    with torch.no_grad():
        out = model(*inputs)
    flat = out if isinstance(out, (tuple, list)) else [out]
    return [tuple(t.shape) for t in flat]


def mha_summary(model: nn.Module) -> str:
    """'embed E, H heads' per nn.MultiheadAttention, compressed when all are equal."""
    items = [f"embed {m.embed_dim}, {m.num_heads} heads" for m in model.modules()
             if isinstance(m, nn.MultiheadAttention)]
    if not items:
        return ""
    return f"{len(items)} x ({items[0]})" if len(set(items)) == 1 else "; ".join(items)


# ----------------------------------------------------------------------------- Torch-Pruning


def ensure_torch_pruning() -> tuple[str | None, str | None]:
    """(installed version, None) or (None, reason); installs torch-pruning==1.6.1 if it is missing."""
    try:
        importlib.import_module("torch_pruning")
    except ImportError:
        print(f"torch_pruning not importable: pip install --no-deps torch-pruning=={TP_VERSION}",
              file=sys.stderr)
        # --no-deps: its requirements would make pip replace the CPU torch with a CUDA build.
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", f"torch-pruning=={TP_VERSION}"],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"pip install torch-pruning=={TP_VERSION} failed: {tail}"
        importlib.invalidate_caches()
        try:
            importlib.import_module("torch_pruning")
        except ImportError as exc:
            return None, f"torch_pruning still not importable after pip install: {describe(exc)}"
    try:
        # torch_pruning.__version__ says 1.6.0 in the 1.6.1 wheel; the distribution metadata is right.
        return importlib.metadata.version("torch-pruning"), None
    except importlib.metadata.PackageNotFoundError:
        return "unknown", None


def tp_prune(model: nn.Module, inputs: tuple[torch.Tensor, ...], ignored: Sequence[str],
             round_to: int | None) -> None:
    """Prune `model` in place with Torch-Pruning's standard local L2 magnitude recipe."""
    import torch_pruning as tp

    modules = dict(model.named_modules())
    kwargs: dict[str, Any] = {}
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    if heads:
        kwargs.update(num_heads=heads, prune_num_heads=True, head_pruning_ratio=RATIO)
    pruner = tp.pruner.MetaPruner(
        model, inputs, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=RATIO,
        ignored_layers=[modules[n] for n in ignored], round_to=round_to, global_pruning=False,
        **kwargs,
    )
    pruner.step()


def gp_prune(model: nn.Module, inputs: tuple[torch.Tensor, ...], round_to: int | None, target: str):
    """graphprune's side: ratio 0.5, L2, round_to explicit (1 for none), `target` as given ("auto": the default)."""
    return graphprune.prune_graph(model, inputs, ratio=RATIO, importance="l2", round_to=round_to or 1, target=target)


def worker(tool: str, threads: int, target: str) -> int:
    """Timing worker (child process): warm up on the tiny model, then time one prune per job line on stdin.

    A job is {"model", "round_to", "ignored", "save"}; the reply (one JSON line on stdout) is
    {"seconds": s, "gc": [[generation, ms], ...], "mha": note} or {"error": reason}, "gc" being the cyclic
    garbage collector's collections inside the timed call (gc.callbacks). Every job prunes a freshly built
    model (built outside the timer); with "save", Torch-Pruning's pruned module is pickled there
    (graphprune's result is rebuilt by the parent, which never times it).
    """
    torch.set_num_threads(threads)
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the tools print must not corrupt the reply channel
    warm, warm_inputs = tiny_model()
    if tool == "graphprune":
        gp_prune(warm, warm_inputs, None, target)
    else:
        tp_prune(warm, warm_inputs, ["8"], None)
    collections = CollectionLog()
    gc.callbacks.append(collections)
    for line in sys.stdin:
        job = json.loads(line)
        spec = MODELS[job["model"]]
        model, inputs = spec.build(), spec.example_inputs()
        gc.collect()  # the earlier jobs' garbage is freed here, outside the timer (see the protocol)
        reply: dict[str, Any] = {}
        try:
            before = mha_summary(model)
            collections.done.clear()
            t0 = time.perf_counter()
            if tool == "graphprune":
                gp_prune(model, inputs, job["round_to"], target)
            else:
                tp_prune(model, inputs, job["ignored"], job["round_to"])
            reply["seconds"] = time.perf_counter() - t0
            reply["gc"] = list(collections.done)
            if tool != "graphprune" and before:
                reply["mha"] = f"MHA {before} -> {mha_summary(model)}"
            if job.get("save"):
                torch.save(model, job["save"])
        except Exception as exc:  # any failure of a tool is a result, not a crash
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{os.path.relpath(frame.filename, os.path.dirname(os.path.dirname(torch.__file__)))}:{frame.lineno}"
            reply = {"error": f"{describe(exc)} (at {where} in {frame.name})"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


class CollectionLog:
    """A gc.callbacks entry: `done` lists [generation, ms] of every collection of the cyclic garbage collector."""

    def __init__(self):
        self.done: list[list] = []
        self.started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.done.append([info["generation"], round((time.perf_counter() - self.started) * 1e3, 1)])


class Worker:
    """A timing worker process of one tool; a job that does not answer within `timeout` kills it
    (the next job starts a new one)."""

    def __init__(self, tool: str, threads: int, timeout: float, target: str):
        self.tool, self.threads, self.timeout, self.target = tool, threads, timeout, target
        self.proc: subprocess.Popen | None = None

    def run(self, job: dict) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", self.tool,
                                          "--torch-threads", str(self.threads), "--target", self.target],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         text=True)
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        code = self.proc.poll()
        self.close()
        if code is None:
            return {"error": f"timeout after {self.timeout:g} s"}
        if code < 0:
            sig = signal.Signals(-code).name
            return {"error": f"worker killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")}
        return {"error": f"worker exited with code {code}"}

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


def time_both(workers: dict[str, Worker], name: str, round_to: int | None, ignored: list[str], repeats: int,
              save: str) -> dict[str, tuple[list[float], str | None, str | None, list[list]]]:
    """{tool: (seconds of each run, failure, MHA note, each run's garbage collections)}: the tools' runs alternate
    (order swapped every round), so a slow spell of a shared machine hits both alike. Torch-Pruning's last run
    saves its model."""
    runs: dict[str, list[float]] = {tool: [] for tool in workers}
    collections: dict[str, list[list]] = {tool: [] for tool in workers}
    fail: dict[str, str | None] = {tool: None for tool in workers}
    mha: str | None = None
    for i in range(repeats):
        for tool in (list(workers) if i % 2 == 0 else list(workers)[::-1]):
            if fail[tool]:
                continue
            last = tool == "torch-pruning" and i == repeats - 1
            reply = workers[tool].run({"model": name, "round_to": round_to, "ignored": ignored,
                                       "save": save if last else None})
            if "error" in reply:
                fail[tool] = reply["error"]
            else:
                runs[tool].append(reply["seconds"])
                collections[tool].append(reply.get("gc", []))
                mha = reply.get("mha") or mha
    return {tool: (runs[tool], fail[tool], mha if tool == "torch-pruning" else None, collections[tool])
            for tool in workers}


# ----------------------------------------------------------------------------- one model


def finish_variant(v: Variant, model: nn.Module, inputs: tuple[torch.Tensor, ...],
                   reference_shapes: list[tuple[int, ...]], workdir: str, notes: list[str]) -> None:
    """Check the pruned model runs, count params/MACs, export to ONNX (fills `v` in place)."""
    try:
        shapes = output_shapes(model, inputs)
    except Exception as exc:
        v.fail = f"pruned model does not run: {describe(exc)}"
        return
    if shapes != reference_shapes:
        notes.append(f"{v.key}: output shapes changed {reference_shapes} -> {shapes}")
    try:
        v.params, v.macs = measure(model, inputs)
    except Exception as exc:
        notes.append(f"{v.key}: params/MACs not measured: {describe(exc)}")
    path = os.path.join(workdir, f"{v.key}.onnx")
    try:
        exported = export_onnx(model, inputs, path)
        v.onnx_ok, v.max_abs_diff, v.onnx_path = True, exported.max_abs_diff, exported.path
    except Exception as exc:  # ExportError, or anything the exporter lets through
        v.onnx_ok, v.export_error = False, describe(exc)


def compare_model(name: str, args: argparse.Namespace, tp_error: str | None,
                  workers: dict[str, Worker]) -> ModelResult:
    """Prune `name` with both tools at both rounding settings, measure and benchmark every variant."""
    spec = MODELS[name]
    model, inputs = spec.build(), spec.example_inputs()
    notes: list[str] = []
    try:
        ignored = output_layers(model)
    except Exception as exc:
        ignored = []
        notes.append(f"output layers not found ({describe(exc)}); Torch-Pruning ignores nothing")
    original = Variant("original", "original", None)
    variants = [original]
    result = ModelResult(name, variants, ignored, notes)
    with tempfile.TemporaryDirectory(prefix=f"gp_vs_tp_{name}_") as workdir:
        reference = output_shapes(model, inputs)
        finish_variant(original, model, inputs, reference, workdir, notes)
        for round_to in ROUNDINGS:
            gp = Variant(variant_key("graphprune", round_to), "graphprune", round_to)
            tp = Variant(variant_key("torch-pruning", round_to), "torch-pruning", round_to)
            variants += [gp, tp]
            progress(f"[{name}] graphprune and torch-pruning, round_to={round_to or 1}, alternating")
            tools = {"graphprune": workers["graphprune"]}
            if tp_error:
                tp.fail = tp_error
            else:
                tools["torch-pruning"] = workers["torch-pruning"]
            saved = os.path.join(workdir, f"{tp.key}.pt")
            timed = time_both(tools, name, round_to, ignored, args.prune_repeats, saved)
            for v in (gp, tp):
                if v.tool in timed:
                    v.prune_runs, v.fail, mha, v.prune_gc = timed[v.tool]
                    v.prune_s = statistics.median(v.prune_runs) if v.prune_runs and not v.fail else None
                    if mha:
                        notes.append(f"{v.key}: {mha}")
                    notes.extend(full_collections(v))
            if not gp.fail:  # the model itself, pruned once more here (untimed; prune_graph is deterministic)
                pruned = gp_prune(model, inputs, round_to, args.target)
                finish_variant(gp, pruned.model, inputs, reference, workdir, notes)
                r = pruned.report
                for what, own, ours in (("params", r.params_after, gp.params), ("MACs", r.macs_after, gp.macs)):
                    if ours is not None and own != ours:
                        notes.append(f"{gp.key}: graphprune's report says {what} {own:,}, the counter {ours:,}")
                if original.params is not None and (r.params_before, r.macs_before) != (original.params, original.macs):
                    notes.append(f"{gp.key}: report 'before' ({r.params_before:,} params, {r.macs_before:,} MACs) "
                                 f"differs from the counter ({original.params:,}, {original.macs:,})")
                del pruned
            if not tp.fail and os.path.exists(saved):
                # Our own worker's file in our private temp dir: a full pickle of the pruned module.
                tp_model = torch.load(saved, weights_only=False).eval()
                finish_variant(tp, tp_model, inputs, reference, workdir, notes)
                del tp_model
        if not args.skip_latency:
            progress(f"[{name}] latency")
            measure_latency(variants, args)
    for v in variants:
        for what, text in (("FAIL", v.fail), ("ONNX", v.export_error), ("latency", v.latency_error)):
            if text and len(one_line(text)) > SHORT:
                notes.append(f"{v.key} {what}: {one_line(text)}")
    return result


def measure_latency(variants: list[Variant], args: argparse.Namespace) -> None:
    """One interleaved EDGE benchmark of every exported variant (fills p50_ms in place)."""
    ready = [v for v in variants if v.onnx_path]
    if not ready:
        return
    try:
        report = timing.benchmark(
            {v.key: v.onnx_path for v in ready}, timing.EDGE, warmup=args.warmup,
            repeats=args.repeats, rounds=args.rounds,
            macs={v.key: v.macs for v in ready if v.macs is not None},
            params={v.key: v.params for v in ready if v.params is not None},
        )
    except Exception as exc:
        for v in ready:
            v.latency_error = describe(exc)
        return
    rows = {row.name: row for row in report.rows}
    for v in ready:
        v.p50_ms = rows[v.key].p50_ms


# ----------------------------------------------------------------------------- output


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt_variant(model: str, v: Variant, base: Variant) -> list[str]:
    tool = {"original": "original (unpruned)", "graphprune": "graphprune", "torch-pruning": "torch-pruning"}[v.tool]
    round_cell = "-" if v.tool == "original" else str(v.round_to or 1)
    prune = "-" if v.prune_s is None else f"{v.prune_s:.2f}"
    if v.fail:  # pruning failed (no time), or the pruned model does not run (time kept)
        return [model, tool, round_cell, "FAIL" if v.prune_s is None else prune, "-", "-", "-", "-", "-",
                f"FAIL ({short(v.fail)})"]
    params = "-" if v.params is None else f"{v.params:,}"
    removed = "-" if v.params is None or not base.params else f"{100 * (1 - v.params / base.params):.1f}%"
    macs = "-" if v.macs is None else f"{v.macs / 1e9:.4f}"
    if v.p50_ms is not None:
        p50 = f"{v.p50_ms:.3f}"
        ratio = f"{v.p50_ms / base.p50_ms:.2f}" if base.p50_ms else "-"
    else:
        p50, ratio = ("FAIL" if v.latency_error else "-"), "-"
    if v.onnx_ok:
        onnx = f"yes ({v.max_abs_diff:.1e})"
    elif v.onnx_ok is False:
        onnx = f"no ({short(v.export_error or '')})"
    else:
        onnx = "-"
    return [model, tool, round_cell, prune, params, removed, macs, p50, ratio, onnx]


def render(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_results(results: list[ModelResult], skip_latency: bool) -> str:
    header = ["model", "tool", "round_to", "prune s", "params", "removed", "GMACs", "p50 ms", "p50/orig",
              "ONNX export + ORT match (max abs diff)"]
    rows: list[list[str]] = []
    for res in results:
        if res.error:
            rows.append([res.name, "-", "-", "FAIL", "-", "-", "-", "-", "-", f"FAIL ({short(res.error)})"])
            continue
        base = res.variants[0]
        for i, v in enumerate(res.variants):
            rows.append(fmt_variant(res.name if i == 0 else "", v, base))
    if skip_latency:
        header, rows = header[:7] + header[9:], [r[:7] + r[9:] for r in rows]
        right = {2, 3, 4, 5, 6}
    else:
        right = {2, 3, 4, 5, 6, 7, 8}
    out = [render(header, rows, right), "", "Torch-Pruning seconds / graphprune seconds (> 1: graphprune is faster)"]
    ratio_rows = []
    for res in results:
        cells = [res.name]
        for round_to in ROUNDINGS:
            gp = res.get(variant_key("graphprune", round_to))
            tp = res.get(variant_key("torch-pruning", round_to))
            if gp and tp and gp.prune_s and tp.prune_s:
                cells.append(f"{tp.prune_s / gp.prune_s:.2f}")
            else:
                cells.append("TP FAIL" if tp and tp.fail else "GP FAIL" if gp and gp.fail else "-")
        ratio_rows.append(cells)
    out.append(render(["model", "round_to=1", "round_to=16"], ratio_rows, {1, 2}))
    notes = [(res.name, n) for res in results for n in (
        ([f"Torch-Pruning ignored_layers: {', '.join(res.ignored_for_tp) or '(none)'}"] if not res.error else [])
        + res.notes + ([f"model failed: {res.error}"] if res.error else []))]
    if notes:
        out += ["", "Notes"]
        out += [f"  {name}: {note}" for name, note in notes]
    return "\n".join(out)


def write_json(path: str, data: dict) -> None:
    """Write `data` to `path` atomically (temp file in the same directory, then os.replace)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def to_json(results: list[ModelResult], protocol: dict) -> dict:
    models = {}
    for res in results:
        models[res.name] = {
            "error": res.error, "ignored_for_tp": res.ignored_for_tp, "notes": res.notes,
            "variants": [{k: v for k, v in asdict(var).items() if k != "onnx_path"} for var in res.variants],
        }
    return {"protocol": protocol, "models": models}


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(ZOO),
                        help="comma-separated model names (default: the whole zoo; also by name: "
                             f"{', '.join(GROUPED_EXTRA)})")
    parser.add_argument("--skip-latency", action="store_true", help="no ONNX Runtime latency benchmark")
    parser.add_argument("--warmup", type=int, default=3, help="untimed ORT runs per variant (default 3)")
    parser.add_argument("--repeats", type=int, default=10, help="timed ORT runs per variant (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--tp-timeout", type=float, default=300.0,
                        help="seconds before a Torch-Pruning child is killed (default 300)")
    parser.add_argument("--prune-repeats", type=int, default=3,
                        help="time each pruning this many times, report the median (default 3)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads while pruning, for both tools (default 1; 0: torch's default)")
    parser.add_argument("--target", default="auto",
                        help="graphprune's target (default auto, its default; 'none': no channel step, grouped convs "
                             "pruned inside every group)")
    parser.add_argument("--json", default=None, help="also write the results here (atomically)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: timing worker mode
    args = parser.parse_args(argv)
    if args.worker is None:
        args.model_names = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in args.model_names if m not in MODELS]
        if unknown or not args.model_names:
            parser.error(f"unknown model(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(MODELS)}")
        if args.repeats < args.rounds or args.rounds < 1 or args.warmup < 0:
            parser.error("need --repeats >= --rounds >= 1 and --warmup >= 0")
        if args.prune_repeats < 1 or args.torch_threads < 0:
            parser.error("need --prune-repeats >= 1 and --torch-threads >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args.worker, args.torch_threads or torch.get_num_threads(), args.target)
    started = time.perf_counter()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)  # the timing workers get the same count
    print(f"CPU: {timing.cpu_name()} ({os.cpu_count()} cores); torch {torch.__version__}", flush=True)
    tp_version, tp_error = ensure_torch_pruning()
    if tp_version and tp_version != TP_VERSION:
        progress(f"warning: torch-pruning {tp_version} is installed, this comparison is meant for {TP_VERSION}")
    threads = args.torch_threads or torch.get_num_threads()
    workers = {tool: Worker(tool, threads, args.tp_timeout, args.target) for tool in ("graphprune", "torch-pruning")}
    results = []
    try:
        for name in args.model_names:
            try:
                results.append(compare_model(name, args, tp_error and f"torch-pruning unavailable: {tp_error}", workers))
            except Exception as exc:  # never let one model end the run
                traceback.print_exc()
                results.append(ModelResult(name, [], [], [], error=describe(exc)))
    finally:
        for w in workers.values():
            w.close()
    elapsed = time.perf_counter() - started
    import onnxruntime

    protocol = {
        "ratio": RATIO, "importance": "L2 magnitude, local", "graphprune_target": args.target, "roundings": [1, 16],
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "torch_pruning": tp_version, "onnxruntime": onnxruntime.__version__,
        "graphprune_timing": "whole prune_graph call in a worker process, after a warm-up prune of a tiny model",
        "torch_pruning_timing": "pruner construction + step() in a worker process, after a warm-up prune of a tiny model",
        "timing_order": "one run of each tool in turn, the order swapped every round",
        "latency": None if args.skip_latency else {
            "profile": "edge (1 intra-op thread, pinned to one core, ORT_ENABLE_ALL)",
            "warmup": args.warmup, "repeats": args.repeats, "rounds": args.rounds,
        },
        "prune_repeats": args.prune_repeats,
        "run_seconds": round(elapsed, 1),
    }
    print(f"graphprune vs Torch-Pruning {tp_version or '(unavailable)'}: ratio {RATIO}, L2 magnitude, "
          f"local; torch {torch.__version__} with {torch.get_num_threads()} thread(s), "
          f"onnxruntime {onnxruntime.__version__}")
    print("prune s: graphprune = whole prune_graph call; Torch-Pruning = MetaPruner construction + step(); "
          "each in its own worker process after a warm-up prune, the two tools' runs alternating; "
          f"median of {args.prune_repeats} run(s) each")
    if not args.skip_latency:
        print(f"p50 ms: ONNX Runtime, edge profile (1 thread pinned), all variants of a model "
              f"interleaved in one benchmark: {args.warmup} warm-up, {args.repeats} timed runs "
              f"in {args.rounds} rounds")
    print()
    print(format_results(results, args.skip_latency))
    print(f"\ntotal run time {elapsed:.0f} s")
    if args.json:
        write_json(args.json, to_json(results, protocol))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
