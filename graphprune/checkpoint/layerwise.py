"""Calibration activations of a checkpoint's model, one decoder layer in memory at a time (SparseGPT's and
Wanda's sequential scheme): the input norms ||X_j||_2 of every nn.Linear, from weights streamed off the shards.

    1. record:  everything outside the decoder stack but the output embedding is loaded (float32); the
                calibration batches run to the stack, whose layers are replaced by recorders: each records
                its call's arguments (hidden states, position embeddings, mask...) and hands the hidden
                states on unchanged, the last one stops the forward. The input embedding is freed.
    2. layers:  per decoder layer: load it from the shards (float32), run every stored hidden state through
                it with the per-layer arguments recorded in 1, the hidden states replaced by its outputs;
                free it.
    3. tail:    the input embedding is loaded again and the forward run with every layer replaced by the
                last layer's stored output, to the output embedding (lm_head), which is never run or loaded.
Forward pre-hooks on the nn.Linear modules record, per call (one per batch), a statistic of the input per
channel j: for Wanda the sum over tokens of x_j^2 (float64), ||X_j||_2 = sqrt(the calls' sum), the same sums,
batch by batch, as importance.Wanda takes over the graph; for activation the mean over tokens of |x_j|
(importance.ActivationMean's). A Linear outside the stack counts in 1 before the first layer and in 3 after
the last.

The decoder stack is the longest nn.ModuleList of two or more blocks of one type; the recorders check that
each layer is called on the previous layer's output, so a model whose forward does not chain its layers
is refused. Peak memory: the largest of (the input embedding, one layer) in float32, plus the hidden states.

observe_layers runs passes 1 and 2 only, without the hooks, and hands every layer call's input and output
hidden states to an observer (checkpoint/depth.py's block influence).
"""
from __future__ import annotations

import ctypes
import inspect
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from ..depth import repeated_layer_lists
from ..errors import InputError
from .progress import SILENT, Stage, Tracker
from .source import Checkpoint


Observer = Callable[[int, int, torch.Tensor, torch.Tensor], None]
"""observe(layer index, batch index, the layer's input hidden states, its output hidden states)."""


class StopForward(Exception):
    """Raised inside the model's forward once what is needed is recorded."""


def decoder_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name, list) of the longest nn.ModuleList of two or more modules of one type."""
    lists = repeated_layer_lists(model)
    if not lists:
        raise InputError(f"{type(model).__name__} has no stack of decoder layers (an nn.ModuleList of two or more "
                         "blocks of one type), which layer-by-layer calibration needs; prune with importance='l2' or "
                         "load the model and use prune_graph")
    longest = max(len(m) for _, m in lists)
    best = [(n, m) for n, m in lists if len(m) == longest and not any(n.startswith(o + ".") for o, _ in lists)]
    if len(best) != 1:
        raise InputError(f"{type(model).__name__} has several stacks of {longest} layers "
                         f"({', '.join(n for n, _ in lists if len(dict(lists)[n]) == longest)}); layer-by-layer "
                         "calibration runs one decoder stack: prune with importance='l2' or use prune_graph")
    return best[0]


def _own_tensors(module: nn.Module, prefix: str):
    for name, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
        yield f"{prefix}{name}", name, t


def materialise(model: nn.Module, modules: Mapping[str, nn.Module], checkpoint: Checkpoint,
                keys: Mapping[str, str]) -> None:
    """Give each of `modules` (name -> module of `model`, their own tensors only) CPU storage in its dtype and
    the checkpoint's values; a buffer the checkpoint does not hold (rotary frequencies) is computed by the
    model's own initialisation (transformers' _init_weights), as from_pretrained does."""
    wanted: dict[str, list[tuple[nn.Module, str]]] = {}
    for name, module in modules.items():
        module.to_empty(device="cpu", recurse=False)
        prefix = f"{name}." if name else ""
        own_params = dict(module.named_parameters(recurse=False))
        missing = [(full, local) for full, local, _ in _own_tensors(module, prefix) if full not in keys]
        if missing:
            init = getattr(model, "_init_weights", None)
            unknown = [full for full, local in missing if init is None or local in own_params]
            if unknown:
                raise InputError(f"{unknown[0]!r} is not in the checkpoint {checkpoint.path!r}; its keys must be "
                                 "the model's state_dict names (as save_pretrained writes them)")
            with torch.no_grad():
                init(module)
        for full, local, _ in _own_tensors(module, prefix):
            if full in keys:
                wanted.setdefault(keys[full], []).append((module, local))
    with torch.no_grad():
        for key, tensor in checkpoint.tensors(wanted):
            for module, local in wanted[key]:
                getattr(module, local).copy_(tensor)


def release(modules: Iterable[nn.Module]) -> None:
    """Back to the meta device: the modules' own tensors are freed, and the C heap's free pages handed back."""
    for module in modules:
        module.to_empty(device="meta", recurse=False)
    trim_heap()


def trim_heap() -> None:
    """glibc's malloc_trim(0), where the C library has it: without it the pages of freed tensors below the
    mmap threshold stay resident, and the resident set grew by 0.15 GiB per released 8B-wide layer (measured
    on bench/llm_checkpoint.py --layers 2: 0.40 -> 0.58 -> 0.72 GiB after each release; 0.39 once trimmed)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to hand back this way
        return
    trim(0)


def square_sums(x: torch.Tensor) -> torch.Tensor:
    """Per input channel j, sum over tokens of x_j^2 (float64): importance.Wanda's."""
    x = x.double()
    return (x.movedim(x.ndim - 1, 0).reshape(x.shape[-1], -1) ** 2).sum(1)


def mean_magnitudes(x: torch.Tensor) -> torch.Tensor:
    """Per input channel j, mean over tokens of |x_j| in x's float dtype, then float64: importance.ActivationMean's."""
    return x.abs().movedim(x.ndim - 1, 0).reshape(x.shape[-1], -1).float().mean(1).double()


class InputStatistics:
    """Forward pre-hooks on nn.Linear modules: `statistic(x)` of the input of every call made while armed (one call
    per batch), per module in call order."""

    def __init__(self, linears: Mapping[str, nn.Linear], statistic: Callable[[torch.Tensor], torch.Tensor]):
        self.calls: dict[str, list[torch.Tensor]] = {}
        self.statistic = statistic
        self.armed = {name: False for name in linears}
        self.handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in linears.items()]

    def _hook(self, name: str) -> Callable:
        def hook(module, args):
            if self.armed[name]:
                self.calls.setdefault(name, []).append(self.statistic(args[0]))
        return hook

    def sums(self) -> dict[str, torch.Tensor]:
        """Per module, its calls' statistics added in call order."""
        out = {}
        for name, calls in self.calls.items():
            total = calls[0]
            for more in calls[1:]:
                total = total + more
            out[name] = total
        return out

    def arm(self, names: Iterable[str], on: bool = True) -> None:
        for name in names:
            self.armed[name] = on

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    """A decoder layer's hidden states: its first positional argument, else its `hidden_states` keyword."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        raise InputError("a decoder layer was called without hidden states as its first argument or "
                         "`hidden_states=`; layer-by-layer calibration cannot run this model: use prune_graph")
    return hidden


def with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def output_hidden(output) -> torch.Tensor:
    """The hidden states a layer returns: the output, or its first element."""
    hidden = output if isinstance(output, torch.Tensor) else output[0] if isinstance(output, (tuple, list)) else None
    if not isinstance(hidden, torch.Tensor):
        raise InputError(f"a decoder layer returned {type(output).__name__}, not hidden states (a tensor or a tuple "
                         "starting with one); layer-by-layer calibration cannot run this model: use prune_graph")
    return hidden


class Recorder(nn.Module):
    """Stands in for decoder layer `index` in the record pass: logs its call, hands the hidden states on (the
    last one stops the forward); checks each layer is called on what the previous one returned."""

    def __init__(self, log: list, index: int, last: bool, on_first: Callable[[], None]):
        super().__init__()
        self.log, self.index, self.last, self.on_first = log, index, last, on_first

    def forward(self, *args, **kwargs):
        hidden = hidden_of(args, kwargs)
        if self.index == 0:
            self.on_first()
        elif not self.log or self.log[-1][0] is not hidden:
            raise InputError(f"decoder layer {self.index} was not called on the output of layer {self.index - 1}; "
                             "layer-by-layer calibration runs models whose layers are chained: use prune_graph")
        self.log.append((hidden, args, kwargs))
        if self.last:
            raise StopForward
        return hidden


class Replay(nn.Module):
    """Stands in for a decoder layer in the tail pass: returns the last layer's output of the current batch."""

    def __init__(self, outputs: Sequence, batch: list, on_call: Callable[[], None]):
        super().__init__()
        self.outputs, self.batch, self.on_call = outputs, batch, on_call

    def forward(self, *args, **kwargs):
        self.on_call()
        return self.outputs[self.batch[0]]


def _stop(module, args):
    raise StopForward


def run_model(model: nn.Module, batch: torch.Tensor | Mapping) -> None:
    """model(ids), or model(**batch) for a mapping (input_ids, attention_mask), until StopForward (or its end),
    without a KV cache."""
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    try:
        with torch.no_grad():
            model(**batch, **extra) if isinstance(batch, Mapping) else model(batch, **extra)
    except StopForward:
        pass


def _within(name: str, prefix: str | None) -> bool:
    return prefix is not None and (name == prefix or name.startswith(prefix + "."))


def _name_of(model: nn.Module, module: nn.Module | None) -> str | None:
    return next((n for n, m in model.named_modules() if m is module), None) if module is not None else None


class LayerwiseRun:
    """The three passes of the module docstring over one model instance (float32, on the meta device)."""

    def __init__(self, model: nn.Module, checkpoint: Checkpoint, keys: Mapping[str, str],
                 progress: Tracker = SILENT, statistic: Callable[[torch.Tensor], torch.Tensor] = square_sums):
        self.model, self.checkpoint, self.keys, self.progress = model, checkpoint, keys, progress
        self.stack_name, self.stack = decoder_stack(model)
        self.layers = list(self.stack)
        embed = getattr(model, "get_input_embeddings", lambda: None)()
        head = getattr(model, "get_output_embeddings", lambda: None)()
        self.embed_name, self.head = _name_of(model, embed), head
        head_name = _name_of(model, head)
        self.outside = {n: m for n, m in model.named_modules() if not _within(n, self.stack_name)
                        and not _within(n, head_name) and next(_own_tensors(m, ""), None) is not None}
        linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        self.outside_linears = [n for n in linears if not _within(n, self.stack_name)]
        self.inputs = InputStatistics(linears, statistic)

    def restore(self) -> None:
        """The decoder layers back in the stack (in place of recorders/replays), everything outside it freed."""
        for i, layer in enumerate(self.layers):
            self.stack[i] = layer
        release(self.outside.values())

    def load(self, modules: Mapping[str, nn.Module]) -> None:
        materialise(self.model, modules, self.checkpoint, self.keys)

    def embedding(self) -> dict[str, nn.Module]:
        return {n: m for n, m in self.outside.items() if _within(n, self.embed_name)}

    def record(self, batches: Sequence[torch.Tensor]) -> list[list[tuple]]:
        """Per batch, per layer: (hidden states, args, kwargs) of the layer's call."""
        log: list = []
        n = len(self.layers)
        for i in range(n):
            self.stack[i] = Recorder(log, i, i == n - 1, lambda: self.inputs.arm(self.outside_linears, False))
        for b, batch in enumerate(batches):
            self.inputs.arm(self.outside_linears)
            run_model(self.model, batch)
            if len(log) != (b + 1) * n:
                raise InputError(f"calibration batch {b} ran {len(log) - b * n} of the {n} layers of "
                                 f"{self.stack_name!r}; layer-by-layer calibration needs a forward through every "
                                 "layer: use prune_graph")
        return [log[b * n:(b + 1) * n] for b in range(len(batches))]

    def run_layers(self, calls: list[list[tuple]], observe: Observer | None = None) -> list:
        """Each layer loaded, run on every batch's hidden states, freed; returns the last layer's outputs.
        observe(layer index, batch index, hidden states in, hidden states out) after each call."""
        hidden = [per_layer[0][0] for per_layer in calls]
        outputs: list = []
        calibrated = self.progress.stage(Stage.CALIBRATION, len(self.layers), len(self.layers))
        for i, layer in enumerate(self.layers):
            prefix = f"{self.stack_name}.{i}"
            modules = dict(layer.named_modules(prefix=prefix))
            self.load(modules)
            linears = [n for n in self.inputs.armed if _within(n, prefix)]
            self.inputs.arm(linears)
            with torch.no_grad():
                for b, per_layer in enumerate(calls):
                    args, kwargs = with_hidden(per_layer[i][1], per_layer[i][2], hidden[b])
                    output = layer(*args, **kwargs)
                    if observe is not None:
                        observe(i, b, hidden[b], output_hidden(output))
                    hidden[b] = output_hidden(output)
                    if i == len(self.layers) - 1:
                        outputs.append(output)
            self.inputs.arm(linears, False)
            release(modules.values())
            calibrated.advance(1)
        return outputs

    def tail(self, batches: Sequence[torch.Tensor], outputs: list) -> None:
        """The forward from the last layer's outputs on, up to the output embedding (never run)."""
        current = [0]
        n = len(self.layers)
        for i in range(n):
            last = i == n - 1
            self.stack[i] = Replay(outputs, current, lambda last=last: last and self.inputs.arm(self.outside_linears))
        stop = self.head.register_forward_pre_hook(_stop) if self.head is not None else None
        try:
            for b, ids in enumerate(batches):
                current[0] = b
                self.inputs.arm(self.outside_linears, False)
                run_model(self.model, ids)
        finally:
            if stop is not None:
                stop.remove()

    def norms(self, batches: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Linear module name -> ||X_j||_2 over every calibration token (float64; the statistic: square_sums)."""
        return {name: sums.sqrt() for name, sums in self.input_statistics(batches).sums().items()}

    def input_statistics(self, batches: Sequence[torch.Tensor]) -> InputStatistics:
        """Passes 1-3: the statistic of every Linear input, per call."""
        try:
            self.load(self.outside)
            calls = self.record(batches)
            release(self.embedding().values())
            outputs = self.run_layers(calls)
            self.load(self.embedding())
            self.tail(batches, outputs)
        finally:
            self.inputs.remove()
            self.restore()
        return self.inputs

    def observe_layers(self, batches: Sequence, observe: Observer) -> None:
        """Passes 1 and 2 only (no Linear input norms): observe(layer, batch, h_in, h_out) per layer call."""
        self.inputs.remove()
        try:
            self.load(self.outside)
            calls = self.record(batches)
            release(self.outside.values())
            self.run_layers(calls, observe)
        finally:
            self.restore()


def calibration_ids(calibration: Iterable) -> list[torch.Tensor]:
    """Token-id batches from `calibration`: tensors (batch, tokens), or tuples whose first item is one."""
    batches = []
    for k, batch in enumerate(calibration):
        ids = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise InputError(f"calibration batch {k} is {type(ids).__name__}"
                             f"{' of shape ' + str(tuple(ids.shape)) + ' ' + str(ids.dtype) if isinstance(ids, torch.Tensor) else ''}"
                             "; pass token ids: int64 tensors (batch, tokens), or tuples starting with one")
        batches.append(ids)
    if not batches:
        raise InputError("this importance is data-driven: pass calibration=[token ids (batch, tokens), ...]")
    return batches
