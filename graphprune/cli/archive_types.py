"""The Python types a PT2 archive's inputs and outputs are made of, and the modules that register them with torch.

torch.export.save writes a program's input and output structure as pytree specs that name each container's type
("builtins.tuple", "transformers.modeling_outputs.BaseModelOutput"). torch.export.load rebuilds a type only once it
is registered with torch's pytree, which Hugging Face's output classes are when the module defining them is
imported: a pruned transformers model saved as .pt2 then loads in a process that has imported transformers, and
in no other. So before a .pt2 is loaded, the modules that define its types are imported, for the libraries in
REGISTERING_LIBRARIES only: a file names what it likes, and importing an arbitrary module runs its code.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import zipfile
from typing import Any, Iterator

__all__ = ["REGISTERING_LIBRARIES", "import_registering_modules", "unbuilt_types", "pytree_types"]

# libraries whose output classes register with torch's pytree when their module is imported
REGISTERING_LIBRARIES = frozenset({"transformers", "diffusers"})
_TORCH_KNOWS = ("builtins.", "collections.", "torch.")  # types torch registers itself


def pytree_types(path: str) -> set[str]:
    """The serialized type names in the input and output specs of the programs in the PT2 archive at `path`; empty
    when it is no such archive (torch.export.load then says what it is)."""
    try:
        with zipfile.ZipFile(path) as archive:
            programs = [json.loads(archive.read(name)) for name in archive.namelist()
                        if name.endswith(".json") and "/models/" in f"/{name}"]
    except (OSError, zipfile.BadZipFile, ValueError, KeyError):
        return set()
    return {t for program in programs for spec in _specs(program) for t in _types(spec)}


def unbuilt_types(path: str) -> list[str]:
    """The types of the archive at `path` that torch does not register itself, sorted."""
    return sorted(t for t in pytree_types(path) if not t.startswith(_TORCH_KNOWS))


def import_registering_modules(path: str) -> None:
    """Import the not yet imported modules of REGISTERING_LIBRARIES that define the archive's types (a module that
    fails to import is skipped: loading then says which type it could not rebuild)."""
    for module in sorted({t.rpartition(".")[0] for t in unbuilt_types(path)}):
        library = module.partition(".")[0]
        if library in REGISTERING_LIBRARIES and module not in sys.modules and importlib.util.find_spec(library):
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 (any failure of a library's import: the load names the type)
                continue


def _specs(obj: Any) -> Iterator[Any]:
    """Every `in_spec`/`out_spec` of a serialized program, parsed (treespec_dumps: [protocol, spec])."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("in_spec", "out_spec") and isinstance(value, str):
                try:
                    yield json.loads(value)
                except ValueError:
                    continue
            else:
                yield from _specs(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _specs(value)


def _types(spec: Any) -> Iterator[str]:
    """The `type` of every node of a serialized tree spec."""
    if isinstance(spec, dict):
        if isinstance(spec.get("type"), str):
            yield spec["type"]
        for child in spec.get("children_spec") or ():
            yield from _types(child)
    elif isinstance(spec, list):
        for item in spec:
            yield from _types(item)
