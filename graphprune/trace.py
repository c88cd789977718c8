"""Trace a model with torch.fx and record the value of every node on the example inputs.

Modules that have a rule are leaves, so the analysis sees one node per rule. After
`record_values`, every node carries `node.meta["gp_value"]`: its output with each tensor
replaced by a `TensorMeta(shape, dtype)` and every other value (ints from `x.size()`,
tuples, slices) kept as is, so later stages can re-run data-movement ops on labels.
"""
from __future__ import annotations

import collections
import functools
import inspect
import linecache
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
from torch.fx.proxy import Scope
from torch.utils._pytree import tree_map

from .agreement import is_user_code
from .batch import BATCH_KEY, BatchDim, batch_size
from .copies import DeferredGraphModule, clone_module
from .errors import InputError, TraceError
from .modes import evaluating

META_KEY = "gp_value"
SOURCE_KEY = "gp_source"  # (file, line, function) of the caller's code that made a node (fx frontend)
PARTS_KEY = "gp_parts"  # how many parts the tracer assumed when the caller's code iterated a chunk/split


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


class LeafTracer(fx.Tracer):
    """torch.fx tracer that keeps every module with a rule as a single `call_module` node."""

    def __init__(self, is_rule_module):
        super().__init__()
        self._is_rule_module = is_rule_module
        self.scope, self.module_stack = _Scope("", None), _ModuleStack()

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        return self._is_rule_module(m) or super().is_leaf_module(m, qualname)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None) -> fx.Node:
        """Every call node records the line of the caller's code that made it (`code_location`). Nodes are created
        without arguments and given them after: Graph.create_node walks a call's arguments for raw SymInts to warn of,
        which symbolic tracing never makes (12% of tracing resnet56)."""
        node = super().create_node(kind, target, (), {}, name, type_expr)
        node.args = args
        if kwargs:
            node.kwargs = kwargs
        if kind.startswith("call_"):
            frame, depth = sys._getframe(1), 0
            while frame is not None and depth < 40 and not _user_file(frame.f_code.co_filename):
                frame, depth = frame.f_back, depth + 1
            if frame is not None and depth < 40:
                node.meta[SOURCE_KEY] = (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
        return node

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _PartsProxy(node, self)

    def create_arg(self, a: Any) -> Any:
        """What fx.Tracer.create_arg returns, reached without its checks for the arguments nearly every call
        passes: a proxy of this tracer (its node), a number, string or None (itself), an empty kwargs dict and
        a plain tuple of them. Anything else (parameters, tensors, namedtuples, lists...) goes to fx."""
        kind = type(a)
        if kind is _PartsProxy:
            return a.node
        if kind in _PLAIN_ARGS:
            return a
        if kind is tuple:
            return tuple([self.create_arg(item) for item in a])
        if kind is dict and not a:
            return {}
        return super().create_arg(a)

    def iter(self, obj: fx.Proxy):
        """`list(x.chunk(n, d))`, `for part in x.split([a, b])`: n (or len([a, b])) parts, checked once the
        values are recorded (`check_parts`); any other iteration of a Proxy cannot be traced."""
        node = obj.node
        count = _split_parts(node)
        if count is None:
            return super().iter(obj)
        node.meta[PARTS_KEY] = count
        return iter([obj[i] for i in range(count)])


class _ModuleStack(collections.OrderedDict):
    """The tracer's stack of module calls. fx stores a copy in every node's meta (`nn_module_stack`) with copy.copy,
    which would rebuild an OrderedDict through its pickling protocol; this one's copy is a plain OrderedDict of
    the same items, made by the constructor."""

    def __copy__(self) -> collections.OrderedDict:
        return collections.OrderedDict(self)


class _Scope(Scope):
    """The tracer's current module scope; fx copies it on entering every module call (copy.copy), here by the
    constructor instead of the pickling protocol."""

    def __copy__(self) -> Scope:
        return Scope(self.module_path, self.module_type)


_PLAIN_ARGS = frozenset({int, float, bool, str, type(None)})  # arguments fx keeps as they are (LeafTracer.create_arg)


class _PartsProxy(fx.Proxy):
    """A Proxy whose len() is known for a chunk or a split with a list of sizes (`list()` asks it first)."""

    def __len__(self) -> int:
        count = _split_parts(self.node)
        if count is None:
            return super().__len__()
        self.node.meta[PARTS_KEY] = count
        return count


@functools.lru_cache(maxsize=4096)
def _user_file(filename: str) -> bool:
    """agreement.is_user_code, once per file (a pure function of the name)."""
    return is_user_code(filename)


def _split_parts(node: fx.Node) -> int | None:
    """How many parts a chunk (its `chunks`) or a split with a list of sizes returns; None for anything else."""
    chunk = (node.op == "call_method" and node.target == "chunk") or (node.op == "call_function" and node.target is torch.chunk)
    split = (node.op == "call_method" and node.target == "split") or (node.op == "call_function" and node.target is torch.split)
    given = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks", node.kwargs.get("split_size_or_sections"))
    if chunk and isinstance(given, int):
        return given
    return len(given) if split and isinstance(given, (list, tuple)) else None


def check_parts(gm: fx.GraphModule) -> None:
    """TraceError unless every chunk/split the tracer iterated returned the parts it assumed (a chunk of a
    dim narrower than its `chunks` returns fewer)."""
    for node in gm.graph.nodes:
        assumed, value = node.meta.get(PARTS_KEY), node.meta.get(META_KEY)
        if assumed is not None and (value is None or len(value) != assumed):
            got = "fewer" if value is None else len(value)
            raise TraceError(f"torch.fx cannot trace {type(gm).__name__}: the code iterates `{node.name}` "
                             f"(at {code_location(node)}), which returns {got} parts, not {assumed}; "
                             "unpack it into names instead (`a, b = x.chunk(2, 1)`)")


def code_location(node: fx.Node) -> str:
    """Where in the caller's code `node` was made: "file:line in function: `code`" (fx), the last line of its stack
    trace where one was recorded, else the module that calls it (torch.export keeps `nn_module_stack`)."""
    source = node.meta.get(SOURCE_KEY)
    if source is not None:
        filename, line, function = source
        code = linecache.getline(filename, line).strip()
        return f"{filename}:{line} in {function}" + (f": `{code}`" if code else "")
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    if trace:
        return trace[-2].strip() + ": `" + trace[-1].strip() + "`" if len(trace) > 1 else trace[-1].strip()
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, cls = list(stack.values())[-1]
        cls = getattr(cls, "__qualname__", str(cls).rpartition(".")[2])
        return f"the forward of `{path or '(model)'}` ({cls})"
    return "an unknown line"


def as_tuple(example_inputs) -> tuple[torch.Tensor, ...]:
    """Normalise example inputs to a tuple of tensors, or raise InputError."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise InputError(
        f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}; "
        "pass e.g. (torch.randn(1, 3, 224, 224),)"
    )


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch: the user's code that broke tracing."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
    if not frames:
        return "unknown location"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}: `{(f.line or '').strip()}`"


def trace(model: torch.nn.Module, is_rule_module=lambda m: False, concrete_args: dict | None = None) -> fx.GraphModule:
    """Symbolically trace `model` (`concrete_args`: forward arguments fixed to a value); a failure becomes a
    TraceError naming the offending code. A `**kwargs` of forward that nothing reads is no input of the graph
    (Hugging Face's forwards end with one). The GraphModule's Python code is generated when first used (a
    DeferredGraphModule): the analysis runs the graph node by node (run_graph) and never needs it."""
    tracer = LeafTracer(is_rule_module)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args or None)
    except Exception as exc:  # torch.fx raises many types; all mean "cannot trace"
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: {exc} "
            f"(at {_user_frame(exc)}). Fix: make the module that contains this code a leaf by adding a rule "
            "for it (default_rules().with_rule(MyModule, MyRule())), or wrap the function with torch.fx.wrap, "
            "or remove Python control flow that depends on tensor values."
        ) from exc
    for unread in [n for n in graph.nodes if n.op == "placeholder" and n.target.startswith("**") and not n.users]:
        graph.erase_node(unread)
    gm = DeferredGraphModule(tracer.root, graph, type(model).__name__)
    _mirror_container_modes(gm, tracer.root)
    return gm


def _mirror_container_modes(gm: fx.GraphModule, root: torch.nn.Module) -> None:
    """fx builds the path to each called module out of fresh `nn.Module()` containers, in training mode whatever
    the model's; each takes the mode of the module of `root` it stands for, so `gm` is in the modes `root` is in."""
    stack = [(gm, root)]
    while stack:
        ours, theirs = stack.pop()
        for name, child in ours._modules.items():
            source = theirs._modules.get(name)
            if child is not source and type(child) is torch.nn.Module and source is not None:
                child.training = source.training
                stack.append((child, source))


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):  # the common case, without pytree overhead
        return TensorMeta(tuple(value.shape), value.dtype)
    return tree_map(lambda v: TensorMeta(tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else v, value)


def bind_inputs(gm: fx.GraphModule, args: tuple, kwargs: dict | None = None) -> tuple:
    """One value per placeholder of `gm`: positional `args` first, then `kwargs` by name, then the defaults.

    Forward arguments with defaults (`mask=None`) are optional; a required one left out,
    or a keyword the model does not take, is an InputError.
    """
    kwargs = dict(kwargs or {})
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names = [p.target.lstrip("*") for p in placeholders]
    unknown = sorted(set(kwargs) - set(names))
    if len(args) > len(placeholders) or unknown:
        extra = f"keyword input(s) {unknown} it does not take" if unknown else f"{len(args)} example input(s)"
        raise InputError(f"the model takes {len(placeholders)} input(s) ({', '.join(names)}) but {extra} were given; "
                         "pass one tensor per forward() argument")
    bound = list(args)
    for p, name in zip(placeholders[len(args):], names[len(args):]):
        if name in kwargs:
            bound.append(kwargs.pop(name))
        elif p.args:  # the forward argument's default
            bound.append(p.args[0])
        else:
            raise InputError(f"the model takes {len(placeholders)} input(s) ({', '.join(names)}) but no example "
                             f"value was given for `{name}`; pass one tensor per forward() argument without a default")
    return tuple(bound)


@torch.no_grad()
def record_values(gm: fx.GraphModule, inputs: tuple, run=None) -> Any:
    """Run `gm` on `inputs` (one value per placeholder, see bind_inputs; in its current train/eval mode),
    storing each node's value meta; returns the output. `run` computes one node (see run_graph).

    A real run, not FakeTensors: on batch-1 CNN inputs it is 5-50x faster than FakeTensor
    dispatch, and it proves the rewritten model computes.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise InputError(
            f"the model takes {len(placeholders)} input(s) ({', '.join(p.name for p in placeholders)}) "
            f"but {len(inputs)} example input(s) were given; pass one tensor per forward() argument"
        )

    def record(node: fx.Node, value: Any) -> None:
        node.meta[META_KEY] = _to_meta(value)

    try:
        return run_graph(gm, inputs, record, run)
    except NodeFailure as failure:
        n, exc = failure.node, failure.__cause__
        where = n.meta.get("stack_trace", "").strip().splitlines()[-1:] or [""]
        raise InputError(
            f"running the traced model failed at node `{n.name}` ({n.op} {n.target}): "
            f"{type(exc).__name__}: {exc} {where[0].strip()}. "
            "Check that example_inputs have the shapes and dtypes the model expects."
        ) from exc


class NodeFailure(Exception):
    """Raised by run_graph from the exception of the node that failed (its __cause__)."""

    def __init__(self, node: fx.Node):
        super().__init__(node.name)
        self.node = node


def run_graph(gm: fx.GraphModule, inputs: tuple, on_value: Callable[[fx.Node, Any], None], run=None) -> Any:
    """Run `gm`'s nodes on `inputs` (one per placeholder) as fx.Interpreter does, each value dropped after
    its last use, without the Interpreter's per-node overhead; `on_value(node, value)` sees every node's
    value (the output node's too). `run(gm, node, env, modules)` computes one node (default `run_node`).
    Returns the output; a failing node raises NodeFailure from its error."""
    run = run or run_node
    nodes = list(gm.graph.nodes)
    last_use = {arg: i for i, n in enumerate(nodes) for arg in n.all_input_nodes}
    dies_at: dict[int, list[fx.Node]] = {}
    for arg, i in last_use.items():
        dies_at.setdefault(i, []).append(arg)
    modules = dict(gm.named_modules())
    env: dict[fx.Node, Any] = dict(zip((n for n in nodes if n.op == "placeholder"), inputs))
    for i, n in enumerate(nodes):
        try:
            value = run(gm, n, env, modules)
        except Exception as exc:
            raise NodeFailure(n) from exc
        on_value(n, value)
        if n.op == "output":
            return value
        env[n] = value
        for dead in dies_at.get(i, ()):
            del env[dead]
    return None


def run_node(gm: fx.GraphModule, n: fx.Node, env: dict, modules: dict) -> Any:
    """One node's value, as fx.Interpreter computes it."""
    if n.op == "placeholder":
        return env[n]
    if n.op == "get_attr":
        obj = gm
        for atom in n.target.split("."):
            obj = getattr(obj, atom)
        return obj
    args = fx.node.map_arg(n.args, env.__getitem__)
    kwargs = fx.node.map_arg(n.kwargs, env.__getitem__)
    if n.op == "output":
        return args[0]
    return call_op(n, modules)(*args, **kwargs)


def call_op(n: fx.Node, modules: dict) -> Callable:
    """What a call node calls with its arguments: its function, its module, or its method looked up on the
    object it is called on (the first argument)."""
    if n.op == "call_function":
        return n.target
    if n.op == "call_module":
        return modules[n.target]
    return lambda self_obj, *rest, **kwargs: getattr(self_obj, n.target)(*rest, **kwargs)


def trace_with_values(model: torch.nn.Module, args: tuple, kwargs: dict | None, is_rule_module,
                      record: Callable[[fx.GraphModule, tuple], Any] = record_values) -> tuple[fx.GraphModule, tuple]:
    """The fx frontend: trace a copy of `model` (never the model itself) and `record` every node's value in eval mode.

    Returns the GraphModule (in the model's train/eval mode) and the inputs bound to its placeholders.
    The copy's modules and buffers are its own; its parameters are views of the model's (clone_module's
    `parameter_views`): the analysis only reads them, and every rewrite copies what it does not slice
    (`own_tensors`), so no weight is copied twice and a pruned model shares no storage with the caller's.
    """
    gm = trace(clone_module(model, parameter_views=True), is_rule_module, omitted_none_arguments(model, args, kwargs))
    inputs = bind_inputs(gm, args, kwargs)
    gm.meta[BATCH_KEY] = BatchDim(batch_size(inputs))  # size() calls are nodes: any batch, unless the code bakes one
    try:
        with evaluating(gm):
            record(gm, inputs)
    except InputError as exc:
        check_parts(gm)  # a part the tracer assumed and the run lacks is a trace error, not the inputs'
        raise exc
    check_parts(gm)
    return gm, inputs


def omitted_none_arguments(model: torch.nn.Module, args: tuple, kwargs: dict | None) -> dict:
    """Forward arguments with default None that the example inputs leave out, fixed to None for tracing:
    `if mask is not None:` then takes the branch the model runs, not the one a Proxy would."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name: None for i, p in enumerate(params)
            if p.default is None and p.name not in (kwargs or {}) and not (p.kind in positional and i < len(args))}


def capture_values(gm: fx.GraphModule, inputs: tuple, wanted: set[str]) -> dict[str, Any]:
    """Run `gm` on `inputs` and return the (detached) values of the nodes named in `wanted`; a failing node
    raises its own error."""
    values: dict[str, Any] = {}

    def keep(node: fx.Node, value: Any) -> None:
        if node.name in wanted:
            values[node.name] = value.detach() if isinstance(value, torch.Tensor) else value

    try:
        run_graph(gm, inputs, keep)
    except NodeFailure as failure:
        raise failure.__cause__ from None
    return values


def value_meta(node: fx.Node) -> Any:
    return node.meta[META_KEY]
