"""The code's structure as the next engineer reads it: no module reaches into another module's private names."""
import ast
import pathlib

import graphprune

ROOT = pathlib.Path(graphprune.__file__).parent


def private_imports(source: str, package: str) -> list[str]:
    """`module import name` for every import of a graphprune name or module that starts with one underscore."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            pairs = [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            pairs = [(alias.name, "") for alias in node.names]
        else:
            continue
        for module, name in pairs:
            path = module.split(".") + ([name] if name else [])
            if path[0] == "graphprune" and any(p.startswith("_") and not p.startswith("__") for p in path):
                found.append(f"{module} import {name}")
    return found


def test_no_module_imports_a_private_name_of_another():
    offences = []
    for path in sorted(ROOT.rglob("*.py")):
        package = ".".join(("graphprune",) + path.relative_to(ROOT).parent.parts)
        offences += [f"{path.relative_to(ROOT)}: {o}" for o in private_imports(path.read_text(), package)]
    assert offences == []


def test_the_check_reports_private_imports():
    source = "from .api import _hidden, prune_graph\nfrom ..models._private import Block\nimport graphprune._x\n"
    assert private_imports(source, "graphprune.passes") == [
        "graphprune.passes.api import _hidden", "graphprune.models._private import Block", "graphprune._x import "]
