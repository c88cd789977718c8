"""Independent copies of modules and traced GraphModules, made without copy.deepcopy's pickling protocol.

A copy never shares a module or a hook table with its original; it shares tensors only where asked
(`share_tensors`, then `own_tensors` before anything writes to them) or views parameters
(`parameter_views`, for the analysis, which only reads them).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.fx as fx

try:  # a GraphModule that generates its Python code on first use (forward, .code, pickling), not when built
    from torch.fx._lazy_graph_module import _LazyGraphModule as DeferredGraphModule
except ImportError:  # a torch without it: the code is generated at once
    DeferredGraphModule = fx.GraphModule

__all__ = ["DeferredGraphModule", "clone_module", "copy_graph_module", "own_tensors"]


def clone_module(module: torch.nn.Module, share_tensors: bool = False, *,
                 parameter_views: bool = False) -> torch.nn.Module:
    """A deep copy of a module tree: new modules, parameters and buffers; shared tensors stay shared.

    Faster than copy.deepcopy (no pickling protocol per attribute). Dict and set attributes (hooks, the
    names of non-persistent buffers) are copied; others are shared with the original, which is safe as
    rewrites rebind attributes, never mutate them in place. With `share_tensors`, only the
    modules are new: the copy holds the original's very tensors (see `own_tensors`). With
    `parameter_views`, each parameter is a new Parameter object over the original's storage
    (its flags and `.grad` are the copy's own; nothing may write to its values) and each
    buffer is a copy (a train-mode forward updates BatchNorm statistics in place).
    """
    if isinstance(module, fx.GraphModule) and not share_tensors:  # its class carries generated code
        return copy.deepcopy(module)
    memo: dict[int, Any] = {}  # one memo for the whole tree: tied tensors stay tied

    def tensor(t):
        if t is None or share_tensors:
            return t
        if id(t) not in memo:
            viewed = parameter_views and isinstance(t, torch.nn.Parameter)
            memo[id(t)] = torch.nn.Parameter(t.detach(), t.requires_grad) if viewed else _copied(t)
        return memo[id(t)]

    def clone(m):
        if m is None:
            return None
        if id(m) not in memo:
            new = m.__class__.__new__(m.__class__)
            # own copies of the per-module dicts (hooks, state): registering on the clone leaves the original alone;
            # the three tables are written straight into __dict__ (what Module.__setattr__ does for a dict value)
            state = new.__dict__  # filled in place: assigning __dict__ would go through Module.__setattr__
            state.update({k: (v.copy() if isinstance(v, _OWN) and k not in _TABLES else v) for k, v in m.__dict__.items()})
            memo[id(m)] = new
            state["_parameters"] = {k: tensor(p) for k, p in m._parameters.items()}
            state["_buffers"] = {k: tensor(b) for k, b in m._buffers.items()}
            state["_modules"] = {k: clone(c) for k, c in m._modules.items()}
        return memo[id(m)]

    return clone(module)


_TABLES = frozenset({"_parameters", "_buffers", "_modules"})  # a module's tensor and child tables (clone_module)
_OWN = (dict, set)  # attributes a module's copy gets its own copy of: registering hooks or buffers writes to them


def _copied(t: torch.Tensor) -> torch.Tensor:
    data = t.detach().clone()
    return torch.nn.Parameter(data, t.requires_grad) if isinstance(t, torch.nn.Parameter) else data


def own_tensors(module: torch.nn.Module, shared_with: torch.nn.Module) -> None:
    """Give `module` its own copy of every parameter and buffer it still shares with `shared_with` (ties kept)."""
    theirs = {id(t) for m in shared_with.modules() for table in (m._parameters, m._buffers) for t in table.values()}
    memo: dict[int, torch.Tensor] = {}
    for m in module.modules():
        for table in (m._parameters, m._buffers):
            for name, t in table.items():
                if t is not None and id(t) in theirs:
                    if id(t) not in memo:
                        memo[id(t)] = _copied(t)
                    table[name] = memo[id(t)]


def copy_graph_module(gm: fx.GraphModule, share_tensors: bool = False, compiled: bool = True) -> fx.GraphModule:
    """An independent copy of a traced GraphModule: own submodules and graph (node values kept), and own
    parameters and buffers unless `share_tensors` (then call `own_tensors` before anything writes to them).

    Rewrites work on such a copy, so the analysed GraphModule is never mutated. With `compiled=False`
    the copy's Python code is not generated (it cannot run until `recompile()`): for a caller that
    rewrites the graph and recompiles anyway. The copy of a DeferredGraphModule is a plain GraphModule.
    """
    graph = copy_graph(gm.graph)
    cls = fx.GraphModule if isinstance(gm, DeferredGraphModule) else gm.__class__
    new = cls.__new__(cls)
    new.__dict__ = {k: (v.copy() if isinstance(v, _OWN) else v) for k, v in gm.__dict__.items()}
    holder = torch.nn.Module()  # the root's own tensors and children, cloned as one tree (one memo)
    holder._parameters, holder._buffers, holder._modules = gm._parameters, gm._buffers, gm._modules
    cloned = clone_module(holder, share_tensors)
    new._parameters, new._buffers, new._modules = cloned._parameters, cloned._buffers, cloned._modules
    if compiled:
        new.graph = graph  # re-owns the graph and recompiles the code
    else:
        new._graph, graph.owning_module = graph, new  # what the graph setter does, without its recompile
    return new


def copy_graph(source: fx.Graph) -> fx.Graph:
    """`source`'s nodes in a new Graph, as Graph.__deepcopy__ makes them (names, types, a shallow copy of each meta) but
    faster: each node is created without arguments and given them after, as Graph.create_node walks a call's
    arguments for raw SymInts to warn of, which a copy of a valid graph adds none of (a third of graph_copy's time
    on resnet56)."""
    graph = fx.Graph()
    graph.set_codegen(copy.copy(source._codegen))  # export's pytree in/out handling; its specs are immutable
    copies: dict[fx.Node, fx.Node] = {}
    for node in source.nodes:
        new = graph.create_node(node.op, node.target, name=node.name, type_expr=node.type)
        new.args = fx.node.map_arg(node.args, copies.__getitem__)
        if node.kwargs:
            new.kwargs = fx.node.map_arg(node.kwargs, copies.__getitem__)
        new.meta = copy.copy(node.meta)
        copies[node] = new
    return graph
