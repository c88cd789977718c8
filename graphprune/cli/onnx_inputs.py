"""ONNX files' inputs against the shapes given on the command line (bench --input-shape NAME=d0,d1,...).

A given shape must name an input of some file and fit its static dims; every dynamic dim beyond a
batch dim 0 needs a given shape.
"""
from __future__ import annotations

from .messages import CLIError
from .models import parse_shape


def parse_named_shapes(entries: list[str] | None) -> dict[str, tuple[int, ...]]:
    """--input-shape NAME=1,3,224,224 (repeatable) -> {NAME: (1, 3, 224, 224)}."""
    shapes = {}
    for entry in entries or []:
        name, sep, dims = entry.partition("=")
        if not sep or not name:
            raise CLIError(f"--input-shape {entry!r} must be NAME=d0,d1,... (the ONNX input's name), "
                           "e.g. input_0=1,3,224,224")
        if name in shapes:
            raise CLIError(f"--input-shape gives input {name!r} twice; give each input once")
        shapes[name] = parse_shape(dims, f"--input-shape {name}=")
    return shapes


def onnx_input_dims(path: str) -> dict[str, list] | None:
    """{input name: dims (int, or str/None for dynamic)} of an ONNX file; None if it cannot be read."""
    import onnx

    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception:
        return None  # bench reports unreadable files with its own message
    initializers = {t.name for t in graph.initializer}
    out = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        out[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    return out


def check_input_shapes(paths: dict[str, str], shapes: dict[str, tuple[int, ...]]) -> None:
    """Given shapes must name an input and fit it; every dynamic dim (beyond a batch dim 0) needs one."""
    signatures = {path: onnx_input_dims(path) for path in paths.values()}
    names = {name for inputs in signatures.values() if inputs for name in inputs}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise CLIError(f"--input-shape names {unknown}, which no model has as an input; inputs are {sorted(names)}")
    for path, inputs in signatures.items():
        for name, dims in (inputs or {}).items():
            example = ",".join(str(d) if isinstance(d, int) and d > 0 else "N" for d in dims)
            given = shapes.get(name)
            if given is None:
                dynamic = [k for k, d in enumerate(dims) if k > 0 and not (isinstance(d, int) and d > 0)]
                if dynamic:
                    raise CLIError(f"{path}: input {name!r} has dynamic dim {dynamic[0]} ({dims[dynamic[0]]!r}); "
                                   f"pass --input-shape {name}={example} with a size for every dim")
                continue
            fixed = [(k, d) for k, d in enumerate(dims) if isinstance(d, int) and d > 0]
            if len(given) != len(dims) or any(given[k] != d for k, d in fixed):
                raise CLIError(f"{path}: --input-shape {name}={','.join(map(str, given))} does not fit input "
                               f"{name!r} of shape {dims}; pass --input-shape {name}={example}")
