"""The code's structure as the next engineer reads it: no module reaches into another module's private names,
and no two modules import each other, even through imports inside functions."""
import ast
import pathlib
from typing import Iterable, Mapping

import graphprune

ROOT = pathlib.Path(graphprune.__file__).parent


def imported_from(node: ast.ImportFrom, package: str) -> str:
    """The absolute module of `from ... import`, written in a module of `package` (relative imports resolved)."""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1] if node.level else []
    return ".".join(base + ([node.module] if node.module else []))


def private_imports(source: str, package: str) -> list[str]:
    """`module import name` for every import of a graphprune name or module that starts with one underscore."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            module = imported_from(node, package)
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


# -- import cycles ---------------------------------------------------------------------------------------------


def module_name(path: str) -> str:
    """"graphprune.runtimes.calibration" for "runtimes/calibration.py", "graphprune.runtimes" for its __init__.py."""
    parts = ("graphprune",) + pathlib.PurePosixPath(path).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(sources: Mapping[str, str]) -> dict[str, set[str]]:
    """{module: the graphprune modules it imports}, from {path under graphprune/: source}.

    Every import statement counts, wherever it is: at the top, inside a function, under TYPE_CHECKING.
    `from P import x` imports the module P.x when there is one, else P. Importing P.Q also runs the
    __init__ of each package above it that the importing module is not inside (not graphprune's own,
    which every module is inside)."""
    modules = {module_name(path): path for path in sources}
    graph = {}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(sources[path])):
            if isinstance(node, ast.ImportFrom):
                base = imported_from(node, package)
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        for target in list(targets):
            parts = target.split(".")
            targets |= {p for p in (".".join(parts[:i]) for i in range(1, len(parts)))
                        if not (module == p or module.startswith(p + "."))}
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a] (depth-first, in sorted order), or None when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for child in sorted(graph.get(node, ())):
            cycle = visit(child)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    return next((cycle for cycle in map(visit, sorted(graph)) if cycle), None)


def test_graphprune_has_no_import_cycle():
    sources = {path.relative_to(ROOT).as_posix(): path.read_text() for path in sorted(ROOT.rglob("*.py"))}
    graph = import_graph(sources)
    assert len(graph) > 50 and graph["graphprune.analysis"]  # the walk saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_check_finds_a_cycle_through_imports_inside_functions():
    """The cycle this test was written for: two of its four arrows were imports inside functions."""
    sources = {
        "analysis.py": "from .targets import resolve_target\n",
        "targets.py": "def calibrate():\n    from .runtimes import calibration as cal\n",
        "runtimes/__init__.py": "from .kinds import Runtime\n",
        "runtimes/kinds.py": "import enum\n",
        "runtimes/calibration.py": "from .kinds import Runtime\n\ndef path():\n    from ..latency import cache_root\n",
        "latency.py": "from .analysis import analyse\n",
    }
    graph = import_graph(sources)
    assert graph["graphprune.targets"] == {"graphprune.runtimes", "graphprune.runtimes.calibration"}
    assert graph["graphprune.runtimes.calibration"] == {"graphprune.runtimes.kinds", "graphprune.latency"}
    assert find_cycle(graph) == ["graphprune.analysis", "graphprune.targets", "graphprune.runtimes.calibration",
                                 "graphprune.latency", "graphprune.analysis"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 60


def oversized(sources: Mapping[str, str]) -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions (methods, nested ones) over MAX_FUNCTION_LINES."""
    found = []
    for name, source in sources.items():
        if source.count("\n") > MAX_MODULE_LINES:
            found.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}: {node.name} is {length} lines")
    return found


def test_no_module_over_500_lines_and_no_function_over_60():
    sources = {path.relative_to(ROOT).as_posix(): path.read_text() for path in sorted(ROOT.rglob("*.py"))}
    assert oversized(sources) == []


def test_the_size_check_finds_a_long_function_and_a_long_module():
    long_function = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    long_module = "x = 1\n" * (MAX_MODULE_LINES + 1)
    assert oversized({"a.py": long_function, "b.py": long_module, "c.py": "def g():\n    return 1\n"}) == [
        f"a.py: f is {MAX_FUNCTION_LINES + 1} lines", f"b.py: {MAX_MODULE_LINES + 1} lines"]
