"""The command line's grammar: every command, flag, choice, default and help text (argparse), and nothing it runs.

entry.main dispatches the parsed arguments to the command modules (prune, explain, bench, demo).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys

import torch

from .. import timing
from ..importance import BUILTIN
from ..models import DEFAULT_MODEL

#: --profile NAME: the timing profile it names
PROFILES = {"cpu": timing.CPU, "edge": timing.EDGE}
TARGETS = ["auto", "ort-x86", "xnnpack", "arm", "none"]
MODEL_HELP = ("a built-in model name (graphprune explain --list), package.module:factory (a function returning an eager "
                        "nn.Module), a .pt2 ExportedProgram (torch.export.save), a Hugging Face model directory "
                        "(config.json + weights), timm:NAME (needs timm) or an ultralytics .pt/.yaml (needs "
                        "ultralytics); recognised from what it is")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: "graphprune: error: ...; see graphprune prune --help"."""

    def error(self, message: str):
        print(f"graphprune: error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def version_text() -> str:
    try:
        version = importlib.metadata.version("graphprune")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    try:
        ort = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        ort = "not installed"
    return f"graphprune {version} (torch {torch.__version__}, onnxruntime {ort}, python {platform.python_version()})"


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--input-shape", metavar="D0,D1,...",
                   help="shape of the random example input, e.g. 1,3,224,224 (required for package.module:factory; "
                        "the other kinds default to their own; a Hugging Face text model takes 1,LENGTH)")
    p.add_argument("--vocab-size", type=int, metavar="N",
                   help="the factory's (or .pt2's) model takes token ids: the example input is random ids in [0, N) "
                        "of --input-shape (batch, length) instead of random floats; --text needs it (a Hugging Face "
                        "directory's config states it)")


def _add_out(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--out", required=required, metavar="DIR",
                   help="output directory; missing parents are created; it must not exist or be empty"
                        + ("" if required else " (default: a new temporary directory)"))
    p.add_argument("--force", action="store_true",
                   help="replace a non-empty --out directory whole (the old one is deleted after the new one is "
                        "complete)")


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines on stderr (progress is shown only when stderr is a terminal)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list every group that rounding to the target's channel steps changed (default: the first four)")


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--round-to", type=int, default=None, metavar="N",
                   help="kept channel counts become multiples of N (overrides --target)")
    p.add_argument("--target", default="auto", choices=TARGETS,
                   help="deployment target whose channel-count rules pick the rounding (default auto: ort-x86 on "
                        "x86-64, else xnnpack)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="graphprune", description="Structured pruning as a torch.fx compiler pass: "
                                     "physically smaller models, ONNX export, ONNX Runtime benchmarks.")
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print graphprune's version (and torch's, onnxruntime's) and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (_add_prune, _add_apply, _add_recover, _add_explain, _add_bench, _add_demo):
        add_command(sub)
    return parser


def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="prune a model and write ONNX, a reloadable .pt2, plan.json and report.json",
                       description="Prune MODEL and write original.onnx, model.onnx, model.pt2, plan.json and "
                                   "report.json to --out.")
    _add_model(p)
    _add_budget(p)
    p.add_argument("--importance", default="l2", choices=sorted(BUILTIN),
                   help="how channels are ranked (default l2). activation, apoz and wanda are data-driven: they are "
                        "scored on --calibration-batches batches of --images or --text, else of RANDOM inputs of the "
                        "input shape (a poor proxy). taylor needs labels and a loss and is refused here: use the "
                        "Python API")
    p.add_argument("--calibration-batches", type=int, default=8, metavar="N",
                   help="batches (of --images, --text, else random) for a data-driven --importance (default 8)")
    p.add_argument("--scope", default="local", choices=["local", "global"],
                   help="local: every group loses the ratio; global: channels of all groups are ranked together")
    _add_target(p)
    p.add_argument("--ignore", action="append", metavar="NAME",
                   help="module name whose output channels are kept (names as `graphprune explain` prints them); "
                        "repeat the option or give NAME,NAME")
    _add_recovery(p, "--recover-steps")
    p.add_argument("--stream", action="store_true",
                   help="MODEL is a Hugging Face checkpoint directory (config.json + safetensors): prune it without "
                        "loading its weights (they are read tensor by tensor; wanda runs one decoder layer at a "
                        "time) and write the pruned checkpoint (shards, index, config, tokenizer) to --out instead "
                        "of ONNX and .pt2; --importance l1, l2, wanda or activation")
    p.add_argument("--layers", type=int, metavar="N",
                   help="with --stream, instead of a budget: remove the N decoder layers of lowest block influence "
                        "(1 - mean cos of each layer's input and output hidden states, ShortGPT), scored one layer at "
                        "a time on --calibration-batches batches of --text, else of RANDOM token ids; the kept "
                        "layers are renumbered")
    _add_out(p)
    _add_quiet(p)


def _add_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ratio", type=float, help="share of channels removed per group, in [0, 1)")
    p.add_argument("--target-params", metavar="N",
                   help="instead of --ratio: prune until at most N parameters are left (k/M/G suffixes: 1.5M)")
    p.add_argument("--target-macs", metavar="N", help="instead of --ratio: prune until at most N MACs are left")
    p.add_argument("--target-latency-ms", nargs="+", metavar=("MS", "RUNTIME"),
                   help="instead of --ratio: prune until the latency measured in RUNTIME (ort, the default; "
                        "openvino, executorch), fp32, one pinned thread, is about MS (per-layer timings are measured "
                        "and cached first: this takes minutes)")


def _add_data(p: argparse.ArgumentParser, use: str) -> None:
    p.add_argument("--images", metavar="DIR",
                   help="a folder of images (jpg, png, ...; subfolders included), resized and centre-cropped to the "
                        "input's H x W and normalised with --mean/--std (default: the model family's); " + use)
    p.add_argument("--text", metavar="FILE",
                   help="instead of --images: a UTF-8 text file, one sample a line, tokenized with --tokenizer or "
                        "the Hugging Face model directory's own tokenizer (a model that takes token ids); " + use)
    p.add_argument("--tokenizer", metavar="DIR", help="the folder of the model's saved Hugging Face tokenizer "
                                                      "(local files only), for --text (default: MODEL's own, if any)")
    p.add_argument("--max-length", type=int, metavar="N",
                   help="--text lines are padded or truncated to N tokens (default: the length of the input shape)")
    p.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean for --images (default: the model family's, "
                                                     "else ImageNet's for RGB, 0.5 for gray)")
    p.add_argument("--std", metavar="S[,S,S]", help="per-channel std for --images (default: the model family's, "
                                                    "else ImageNet's for RGB, 0.5 for gray)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images or lines per batch (default 16)")


def _add_recovery(p: argparse.ArgumentParser, steps_flag: str) -> None:
    p.add_argument(steps_flag, dest="steps", type=int, default=200 if steps_flag == "--steps" else 0, metavar="N",
                   help="optimizer steps of distillation from the dense model" + (
                       " (default 200)" if steps_flag == "--steps" else " on --images or --text after pruning "
                                                                         "(default 0: none)"))
    _add_data(p, "the data of a data-driven --importance and of recovery" if steps_flag != "--steps"
              else "the data recovery distils on")
    p.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate (default 1e-4)")
    p.add_argument("--eval-share", type=float, default=0.2, metavar="F",
                   help="share of the batches held out for the fidelity table (default 0.2)")
    p.add_argument("--checkpoints", metavar="DIR", help="write a checkpoint to DIR (atomically) and keep it")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="steps between checkpoints (default 0: only at the end)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoints")


def _add_recover(sub) -> None:
    p = sub.add_parser("recover", help="distil a pruned model from its dense model on images or text; print fidelity",
                       description="Rebuild the pruned model of RUN_DIR (written by graphprune prune), distil it from "
                                   "the dense model on --images or --text, and write the same files as prune to --out, "
                                   "with fidelity before and after in report.json.")
    p.add_argument("run", metavar="RUN_DIR", help="a directory written by graphprune prune (report.json, plan.json)")
    _add_recovery(p, "--steps")
    _add_out(p)
    _add_quiet(p)


def _add_apply(sub) -> None:
    p = sub.add_parser("apply", help="replay a plan.json on a model and write the same files as prune",
                       description="Rebuild the pruned architecture of PLAN (a plan.json from graphprune prune) from "
                                   "MODEL, e.g. with retrained weights, and write the same files as prune.")
    p.add_argument("plan", metavar="PLAN", help="a plan.json written by graphprune prune")
    _add_model(p)
    _add_out(p)
    _add_quiet(p)


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="print the channel groups, the modules in them and why any are frozen")
    p.add_argument("model", nargs="?", metavar="MODEL", help=MODEL_HELP + "; omit it with --list")
    p.add_argument("--input-shape", metavar="D0,D1,...", help="shape of the random example input, e.g. 1,3,224,224")
    p.add_argument("--list", action="store_true", help="list the built-in models and their input shapes")
    _add_target(p)
    _add_quiet(p)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time models or ONNX files in ONNX Runtime, OpenVINO, ExecuTorch; fp32, int8")
    p.add_argument("sources", nargs="+", metavar="MODEL_OR_ONNX",
                   help="ONNX files or models to time; a model is " + MODEL_HELP + ", e.g. the model.pt2 "
                        "graphprune prune wrote")
    p.add_argument("--input-shape", action="append", metavar="[NAME=]D0,D1,...",
                   help="NAME=dims: concrete shape for an ONNX input with dynamic dims, e.g. input_0=1,3,224,224 "
                        "(repeatable; a dynamic dim 0 defaults to 1); dims alone: the input shape of a "
                        "package.module:factory MODEL")
    p.add_argument("--runtime", default="ort", metavar="R[,R...]",
                   help="ort, openvino, executorch, comma-separated (default ort); OpenVINO and ExecuTorch need "
                        "pip install 'graphprune[edge]'; ExecuTorch needs a MODEL (e.g. a .pt2), not an ONNX file")
    p.add_argument("--precision", default="fp32", metavar="P[,P...]",
                   help="fp32, int8, comma-separated (default fp32); int8 is static post-training quantisation "
                        "calibrated on --images or --text, else on RANDOM batches (timing only)")
    p.add_argument("--calibration-batches", type=int, default=4, metavar="N",
                   help="batches (of --images, --text, else random) for int8 calibration (default 4)")
    _add_data(p, "int8 calibration data")
    p.add_argument("--plot", metavar="PNG", help="also plot p50 latency against MACs per runtime (needs matplotlib)")
    p.add_argument("--profile", action="append", choices=sorted(PROFILES),
                   help="cpu (all cores) or edge (one pinned thread); repeatable; default edge")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per model (default 10)")
    p.add_argument("--repeats", type=int, default=50, help="timed runs per model (default 50)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the timed runs are split into (default 5)")
    p.add_argument("--json", metavar="FILE", help="also write the reports as JSON to FILE")
    _add_quiet(p)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help=f"prune {DEFAULT_MODEL} at ratio 0.5, export, check parity, benchmark")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in model name (default {DEFAULT_MODEL})")
    p.add_argument("--ratio", type=float, default=0.5, help="share of channels removed per group (default 0.5)")
    _add_target(p)
    p.add_argument("--runtime", default=None, metavar="R[,R...]",
                   help="runtimes to show dense -> pruned -> pruned+int8 on (default: ort, and openvino when "
                        "installed); add executorch to include ExecuTorch-XNNPACK (slow: lowering takes minutes)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per model (default 10)")
    p.add_argument("--repeats", type=int, default=50, help="timed runs per model (default 50)")
    _add_out(p, required=False)
    _add_quiet(p)
