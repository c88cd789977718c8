"""An ultralytics model as MODEL: a model config (.yaml, a file or a name ultralytics ships, e.g. yolov8n.yaml: its
yolov8.yaml at scale n) built with random weights, or a checkpoint (.pt) read with torch.load(weights_only=True)
against ultralytics' own allow-list of classes (torch_safe_load(safe_only=True)). Needs ultralytics.

The example input is pixels in [0, 1] (ultralytics reads pixels / 255), (1, 3, 640, 640) unless --input-shape says
otherwise; ultralytics is imported with YOLO_OFFLINE=1 unless the environment sets it. The pruned DetectionModel
(result.module) is written as an ultralytics checkpoint, `ultralytics.pt` in --out, as `YOLO.save` writes one
(float16 weights, the source checkpoint's train_args kept): `YOLO(path)` reloads it with the pruned shapes, and
graphprune.integrations.ultralytics.keep_model fine-tunes it without rebuilding it.
"""
from __future__ import annotations

import copy
import datetime
import os
import zipfile

import torch

from ..atomic import StagedDirectory
from ..errors import GraphPruneError, first_line
from .distil import pruned_module
from .messages import CLIError, one_line

SHAPE = (1, 3, 640, 640)
SAVED = "ultralytics.pt"  # the pruned checkpoint inside --out


def _import(path: str):
    """ultralytics, offline unless the user's environment says otherwise: the command line reads local files and the
    configs ultralytics ships, so its import-time connectivity check (DNS lookups) and telemetry have no use here."""
    os.environ.setdefault("YOLO_OFFLINE", "1")  # read once, when ultralytics is first imported (this process only)
    try:
        import ultralytics
    except ImportError:
        where = "" if os.path.isfile(path) else " (no such file here, so the name of a config ultralytics ships)"
        raise CLIError(f"MODEL {path!r} is an ultralytics model{where}; reading it needs ultralytics, which is not "
                       "installed; pip install 'graphprune[ultralytics]'") from None
    return ultralytics


def _from_checkpoint(path: str) -> tuple[torch.nn.Module, dict]:
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(path, safe_only=True)
    except Exception as exc:
        raise CLIError(f"ultralytics cannot read the checkpoint {path!r} with torch.load(weights_only=True) "
                       f"({type(exc).__name__}: {one_line(exc)}); graphprune reads checkpoints only that way: pass "
                       "a .pt that ultralytics wrote (YOLO.save, training) or the model's .yaml") from None
    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, torch.nn.Module):
        raise CLIError(f"the checkpoint {path!r} holds no model under 'ema' or 'model'; pass a .pt that ultralytics "
                       "wrote (YOLO.save, training) or the model's .yaml")
    return model, ckpt


def load(path: str, shape) -> tuple[torch.nn.Module, torch.Tensor, dict]:
    """(DetectionModel in float32 eval mode, example input, the checkpoint's dict: {} for a .yaml)."""
    ultralytics = _import(path)
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        model, ckpt = _from_checkpoint(path)
    elif not path.lower().endswith((".yaml", ".yml")):
        raise CLIError(f"MODEL {path!r} is an ultralytics model config, but ultralytics reads one only from a file "
                       "named .yaml or .yml; rename it")
    else:
        try:
            model, ckpt = ultralytics.YOLO(path, verbose=False).model, {}
        except Exception as exc:
            what = (f"ultralytics cannot build MODEL {path!r}" if os.path.isfile(path) else
                    f"MODEL {path!r} is no file here, nor a config ultralytics ships")
            raise CLIError(f"{what} ({type(exc).__name__}: {first_line(exc)}); pass a model config ultralytics "
                           "reads: a .yaml file or a name it ships (yolov8n.yaml, yolo11n.yaml)") from None
    x = torch.rand(shape or SHAPE, generator=torch.Generator().manual_seed(1))
    return model.float().eval(), x, ckpt


def save(result, out: StagedDirectory, ckpt: dict) -> dict:
    """The pruned model as an ultralytics checkpoint (what YOLO.save writes) in --out; {"format", "file", "line"}."""
    import ultralytics

    try:
        module = pruned_module(result)
    except GraphPruneError as exc:
        return {"format": "pt2", "line": f"pruned model: model.pt2 only ({SAVED} unavailable: {one_line(exc)})"}
    kept = {k: v for k, v in ckpt.items() if k in ("train_args", "date", "version", "license", "docs")}
    torch.save({**kept, "ema": None, "optimizer": None, "model": copy.deepcopy(module).half(),
                "date": datetime.datetime.now().astimezone().isoformat(), "version": ultralytics.__version__},
               out.file(SAVED))
    return {"format": "ultralytics", "file": SAVED, "class": type(module).__name__,
            "line": f"pruned model: {SAVED} (ultralytics.YOLO('{SAVED}') reloads the pruned {type(module).__name__}), "
                    "and model.pt2"}
