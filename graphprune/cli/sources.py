"""What MODEL on the command line is, recognised from what it is, not from what it is called.

    timm:NAME                         a timm model (needs timm)
    a directory with config.json      a Hugging Face model directory (config + weights)
    a file, by its bytes:
      a zip whose archive_format is pt2         a torch.export ExportedProgram (.pt2, torch.export.save)
      a torch.save zip pickling ultralytics.*   an ultralytics checkpoint (.pt; needs ultralytics)
      YAML with backbone: and head:             an ultralytics model config (.yaml; needs ultralytics)
      an ONNX ModelProto                        an ONNX file (bench times it; prune needs the PyTorch model)
    NAME.yaml, no such file here              a model config ultralytics ships (yolov8n.yaml; needs ultralytics)
    package.module:factory            a function returning an nn.Module
    anything else                     a built-in model name

A file or directory that is none of these, or claims a kind by its suffix and is not it, is one CLIError
naming what was given and what is accepted.
"""
from __future__ import annotations

import enum
import io
import os
import pickletools
import zipfile

from .messages import CLIError

ACCEPTED = ("a built-in model name (graphprune explain --list), package.module:factory, a .pt2 ExportedProgram "
            "(torch.export.save), a Hugging Face model directory (config.json + weights), timm:NAME, or an "
            "ultralytics .pt/.yaml")


class Kind(enum.Enum):
    BUILTIN = "built-in model"
    FACTORY = "package.module:factory"
    EXPORTED = "ExportedProgram (.pt2)"
    HF_DIR = "Hugging Face model directory"
    TIMM = "timm model"
    ULTRALYTICS = "ultralytics model"
    ONNX = "ONNX file"


def _zip_names(path: str) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def _is_pt2(path: str, names: list[str]) -> bool:
    """torch.export.save writes <archive>/archive_format holding b"pt2"."""
    entries = [n for n in names if n.endswith("archive_format")]
    with zipfile.ZipFile(path) as z:
        return any(z.read(n).strip() == b"pt2" for n in entries)


def pickled_modules(data: bytes) -> set[str]:
    """The top-level packages whose globals a pickle references (GLOBAL, or STACK_GLOBAL after two strings)."""
    modules, strings = set(), []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name == "GLOBAL":
                modules.add(str(arg).split(" ")[0].split(".")[0])
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                modules.add(strings[-2].split(".")[0])
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a truncated or foreign pickle: what was read so far
        pass
    return modules


def _torch_save_modules(path: str, names: list[str]) -> set[str] | None:
    """The packages a torch.save zip's data.pkl references; None when the zip is not a torch.save file."""
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pickles:
        return None
    with zipfile.ZipFile(path) as z:
        return pickled_modules(z.read(pickles[0]))


def _yaml_keys(path: str) -> set[str] | None:
    """The top-level keys of a YAML mapping; None when the file is not YAML text."""
    try:
        import yaml
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except ImportError:  # PyYAML comes with ultralytics (and transformers)
        return None
    except Exception:
        return None
    return set(data) if isinstance(data, dict) else None


def _is_onnx(path: str) -> bool:
    try:
        import onnx
        proto = onnx.load(path, load_external_data=False)
    except Exception:
        return False
    return len(proto.graph.node) > 0 or len(proto.graph.input) > 0


def _file_kind(path: str) -> Kind:
    names = _zip_names(path)
    if names is not None:
        if _is_pt2(path, names):
            return Kind.EXPORTED
        modules = _torch_save_modules(path, names)
        if modules is not None and "ultralytics" in modules:
            return Kind.ULTRALYTICS
        if modules is not None:
            raise CLIError(f"MODEL {path!r} is a torch.save pickle (of {', '.join(sorted(modules)) or 'plain data'}), "
                           "not an ExportedProgram or an ultralytics checkpoint; save the model with "
                           "torch.export.save(torch.export.export(model, inputs), 'model.pt2') or pass "
                           "package.module:factory. MODEL is " + ACCEPTED)
    elif _is_onnx(path):
        return Kind.ONNX
    elif {"backbone", "head"} <= (_yaml_keys(path) or set()):
        return Kind.ULTRALYTICS
    claimed = os.path.splitext(path)[1] or "no suffix"
    raise CLIError(f"MODEL {path!r} ({claimed}) is a file graphprune does not recognise: not a torch.export .pt2 "
                   "archive, an ultralytics checkpoint or model YAML (backbone: and head:), nor an ONNX file. "
                   "MODEL is " + ACCEPTED)


def _dir_kind(path: str) -> Kind:
    if os.path.isfile(os.path.join(path, "config.json")):
        return Kind.HF_DIR
    hint = ""
    if os.path.isfile(os.path.join(path, "report.json")) and os.path.isfile(os.path.join(path, "model.pt2")):
        hint = f" (a graphprune output directory: pass {os.path.join(path, 'model.pt2')!r})"
    raise CLIError(f"MODEL {path!r} is a directory without config.json, so not a Hugging Face model directory{hint}; "
                   "MODEL is " + ACCEPTED)


def looks_like_path(spec: str) -> bool:
    """A path separator or a model file's suffix: the user meant a file, so a missing one is an error."""
    return os.path.sep in spec or spec.endswith((".pt2", ".pt", ".pth", ".yaml", ".yml", ".onnx", ".json"))


def detect(spec: str) -> Kind:
    """The Kind of MODEL `spec` (module docstring); CLIError when it is a path that is none of them."""
    if spec.startswith("timm:"):
        if not spec[len("timm:"):]:
            raise CLIError("MODEL 'timm:' names no model; pass timm:NAME, e.g. timm:resnet18")
        return Kind.TIMM
    if os.path.isdir(spec):
        return _dir_kind(spec)
    if os.path.isfile(spec):
        return _file_kind(spec)
    if spec.endswith((".yaml", ".yml")) and os.path.basename(spec) == spec:
        return Kind.ULTRALYTICS  # a bare config name: ultralytics resolves it among the configs it ships
    if looks_like_path(spec):
        raise CLIError(f"MODEL {spec!r} does not exist (no such file or directory); MODEL is " + ACCEPTED)
    return Kind.FACTORY if ":" in spec else Kind.BUILTIN
