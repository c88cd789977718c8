"""`recover`: distil a pruned model from its dense model on the user's data, with fidelity measured.

Contract:
  * The student is a PruneResult (its pruned GraphModule is trained; its teacher defaults to the
    analysed dense graph, node for node, so features can be matched at the kept channels) or a pruned
    nn.Module (then `teacher` is required and only outputs and labels are used).
  * Nothing the caller passed is modified: the student is copied, the teacher is only read (its
    train/eval mode is restored).
  * Fidelity (recovery.fidelity) is measured before and after on `eval_data`, or on the first
    `fidelity_batches` batches of `data` when no held-out data is given (the result says which).
  * The recovered model is the caller's own class when the PruneResult's `module` can be rebuilt
    (the trained tensors loaded by name and the outputs verified against the trained graph), else
    the trained GraphModule (`note` says why).
  * Under torchrun the same call runs data-parallel (recovery.distributed).
  * trainable="lora" trains low-rank adapters on the student's nn.Linear layers and nothing else
    (recovery.lora; a torch.export graph has none, so there the caller's class rebuilt, result.module, is
    the student and the caller's dense model the teacher, outputs distilled); they are merged into the weights before fidelity is measured after, so the recovered
    model has the pruned shapes and classes and no adapter module. Its checkpoints hold the student with
    the adapters unmerged (the frozen weights and the adapters); resume attaches the same adapters first.
"""
from __future__ import annotations

import copy
import difflib
import time
from dataclasses import dataclass, field, replace
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.fx as fx

from ..analysis import PruneResult
from ..agreement import differs_from_graph
from ..eager import EagerRebuildError
from ..errors import InputError
from ..kvcache import cache_off
from ..report import PruneReport
from ..copies import copy_graph_module
from .batches import Batches, module_device, positional_inputs, split
from .distributed import Distributed
from .engine import Objective, StepLog, TrainingJob, checkpoint_path, prepare_checkpoints, train
from .fidelity import Fidelity, fidelity
from .losses import Losses, output_kind
from .lora import Adapters, called_linears
from .options import BatchNormMode, Checkpoints, LoRA, Schedule, Trainable, resolve_device
from .taps import TappedGraph, default_layers, make_taps


@dataclass(frozen=True)
class RecoveryResult:
    model: torch.nn.Module  # the recovered model: the caller's class where it can be rebuilt, else a GraphModule
    before: Fidelity
    after: Fidelity
    history: tuple[StepLog, ...]
    evaluations: tuple[tuple[int, Fidelity], ...] = ()  # (step, fidelity on eval_data) every eval_every steps
    matched_layers: tuple[str, ...] = ()  # nodes whose features were distilled at the kept channels
    fidelity_on: str = "eval_data"  # what fidelity was measured on
    seconds: float = 0.0
    world_size: int = 1
    checkpoint: str | None = None
    note: str = ""
    report: PruneReport | None = field(default=None, repr=False)  # the prune report with `recovery` filled in
    adapted_layers: tuple[str, ...] = ()  # trainable="lora": the Linear modules whose adapters were merged in

    def to_json(self) -> dict:
        return {"before": self.before.to_json(), "after": self.after.to_json(), "steps": len(self.history),
                "final_loss": self.history[-1].loss if self.history else None, "matched_layers": list(self.matched_layers),
                "adapted_layers": list(self.adapted_layers),
                "fidelity_on": self.fidelity_on, "seconds": self.seconds, "world_size": self.world_size,
                "checkpoint": self.checkpoint, "note": self.note,
                "evaluations": [[s, f.to_json()] for s, f in self.evaluations]}

    def summary(self) -> str:
        """The fidelity table before and after recovery, and what was matched."""
        rows = [("top-1 agreement", "top1_agreement"), ("top-5 overlap", "top5_overlap"), ("KL", "kl"),
                ("cosine", "cosine")] + ([("accuracy", "accuracy")] if self.after.accuracy is not None else [])
        lines = [f"{'fidelity (' + self.fidelity_on + ')':32s}{'before':>12s}{'after':>12s}"]
        lines += [f"{name:32s}{getattr(self.before, key):>12.4f}{getattr(self.after, key):>12.4f}" for name, key in rows]
        if self.after.dense_accuracy is not None:
            lines.append(f"{'dense accuracy':32s}{self.after.dense_accuracy:>24.4f}")
        loss = f", final loss {self.history[-1].loss:.4g}" if self.history else ""
        lines.append(f"{len(self.history)} steps in {self.seconds:.1f} s on {self.world_size} process(es){loss}")
        lines.append("features matched at the kept channels: " + (", ".join(self.matched_layers) or "none"))
        if self.adapted_layers:
            lines.append(f"low-rank adapters trained and merged into {len(self.adapted_layers)} linear layer(s)")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


@dataclass(frozen=True)
class _Models:
    student: torch.nn.Module  # the trainable copy (a GraphModule for a PruneResult)
    teacher: torch.nn.Module
    result: PruneResult | None


def _models(student, teacher, device: torch.device, lora: LoRA | None) -> _Models:
    if isinstance(student, PruneResult) and lora is not None and not called_linears(student.model):
        return _rebuilt_models(student, teacher, device)
    if isinstance(student, PruneResult):
        dense = teacher if teacher is not None else student.dense
        if dense is None:
            raise InputError("this PruneResult carries no dense graph; pass teacher=the dense model")
        return _Models(copy_graph_module(student.model).to(device), dense, student)
    if not isinstance(student, torch.nn.Module):
        raise InputError(f"student must be a PruneResult or a pruned torch.nn.Module, got {type(student).__name__}")
    if teacher is None:
        raise InputError("a pruned module was given without its dense model: pass teacher=the dense model "
                         "(or pass the PruneResult, which knows it)")
    return _Models(copy.deepcopy(student).to(device), teacher, None)


def _rebuilt_models(result: PruneResult, teacher, device: torch.device) -> _Models:
    """trainable="lora" on a graph without nn.Linear modules (the torch.export frontend's aten.linear ops): the
    caller's class rebuilt (`result.module`, which has them) is the student and the caller's dense model the
    teacher; the outputs are distilled (features need the graph)."""
    try:
        module = result.module
    except EagerRebuildError as exc:
        raise InputError(f"trainable='lora' needs nn.Linear modules: this graph (torch.export frontend) has none, "
                         f"and the caller's class cannot be rebuilt ({exc}); use trainable='all'") from None
    dense = teacher if teacher is not None else result.source
    return _Models(copy.deepcopy(module).to(device), dense, result)


def _on(device: torch.device, module: torch.nn.Module) -> torch.nn.Module:
    """`module` itself when it is on `device` already, else a copy moved there (the caller's stays put)."""
    return module if module_device(module) == device else copy.deepcopy(module).to(device)


def _taps(models: _Models, losses: Losses):
    """The matched layers (recovery.taps), or () when features are off or the teacher is not the dense graph."""
    result = models.result
    if not losses.features or result is None or models.teacher is not result.dense:
        return ()
    names = losses.layers if losses.layers is not None else \
        default_layers(result.dense, models.student, result.graph, losses.max_layers)
    known = {n.name for n in models.student.graph.nodes} & {n.name for n in result.dense.graph.nodes}
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            raise InputError(f"Losses.layers names {name!r}, which is not a node of both the pruned and the dense "
                             f"graph" + (f" (close: {', '.join(close)})" if close else "")
                             + "; use node names of result.model.graph")
    return make_taps(names, result.graph, result.plan)


def _callers_class(models: _Models, trained: fx.GraphModule) -> tuple[torch.nn.Module, str]:
    """The caller's class with the trained tensors, verified against the trained graph; else the graph and why."""
    result = models.result
    if result is None:
        return trained, ""
    if not isinstance(trained, fx.GraphModule):  # the rebuilt caller's class was trained (_rebuilt_models)
        return trained.eval(), "trained the caller's class rebuilt (result.module): LoRA needs nn.Linear modules"
    device = module_device(trained)
    try:
        module = copy.deepcopy(result.module).to(device)
    except EagerRebuildError as exc:
        return trained, f"returned the GraphModule: {exc}"
    own = module.state_dict()
    module.load_state_dict({k: v for k, v in trained.state_dict().items() if k in own}, strict=False)
    inputs = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in result.example_inputs)
    problem = differs_from_graph(module, trained, inputs)
    if problem is not None:
        return trained, f"returned the GraphModule: the caller's class with the trained weights: {problem}"
    return module.eval(), ""


def _report(result: PruneResult | None, before: Fidelity, after: Fidelity) -> PruneReport | None:
    if result is None:
        return None
    return replace(result.report, recovery={"before": before.to_json(), "after": after.to_json()})


def recover(student: PruneResult | torch.nn.Module, teacher: torch.nn.Module | None = None, data=None, *,
            steps: int | None = None, epochs: int | None = None, lr: float | None = None,
            schedule: Schedule | None = None, losses: Losses = Losses(), batch_norm: BatchNormMode | str = "train",
            trainable: Trainable | str = "all", lora: LoRA | None = None,
            checkpoints: Checkpoints = Checkpoints(), device: str | torch.device = "auto", bf16: bool | None = None,
            eval_data=None, eval_every: int = 0, fidelity_batches: int = 8, batch_size: int = 8,
            on_step: Callable[[StepLog], None] | None = None, progress: bool | None = None) -> RecoveryResult:
    """Distil `student` from `teacher` on `data` and measure fidelity before and after (module docstring).

    `steps`/`epochs`/`lr` are sugar over `schedule` (default: 1 epoch, AdamW lr 1e-4, 5% warm-up, cosine);
    `losses` what is minimised (recovery.losses); `batch_norm` "train", "frozen" or "reestimate";
    `trainable` "all" or "lora" (adapters on the nn.Linear layers, options `lora`, default LoRA(); needs peft);
    `checkpoints` where and how often to save, and whether to resume; `device` "auto" (CUDA when present),
    `bf16` autocast (default: on CUDA); `eval_data` held-out batches, measured every `eval_every` steps;
    `batch_size` rows per batch of a Hugging Face dataset; `on_step(StepLog)` after every step;
    `progress` a progress line (default: on a terminal).
    """
    start = time.perf_counter()
    schedule = _schedule(schedule, steps, epochs, lr)
    batch_norm, lora = _batch_norm_mode(batch_norm), _lora(trainable, lora)
    _check_evaluation(eval_every, eval_data)
    device = resolve_device(device)
    models = _models(student, teacher, device, lora)
    adapters = Adapters(models.student, lora, schedule.seed) if lora is not None else None
    data = Batches(data, batch_size, "recovery data")
    held_out = Batches(eval_data, batch_size, "eval_data") if eval_data is not None else None
    measured_on = held_out if held_out is not None else data
    teacher_module = _on(device, models.teacher)
    with _borrowed(models.teacher, teacher_module, models.student):
        def measure() -> Fidelity:
            return fidelity(teacher_module, models.student, measured_on, readout=losses.readout,
                            max_batches=None if held_out is not None else fidelity_batches)

        before = measure()
        taps = _taps(models, losses)
        positional = positional_inputs(teacher_module)
        objective = _objective(losses, teacher_module, data, positional, taps)
        prepare_checkpoints(checkpoints)  # after every check of the data: bad input writes nothing
        evaluations = []
        job = TrainingJob(
            student=_tapped(models.student, taps), teacher=_tapped(teacher_module, taps),
            objective=objective, data=data, positional=positional,
            schedule=schedule, checkpoints=checkpoints, batch_norm=batch_norm, device=device,
            dist=Distributed.start(device), bf16=device.type == "cuda" if bf16 is None else bf16,
            evaluate=lambda step: evaluations.append((step, measure())),
            eval_every=eval_every, on_step=on_step, progress=progress)
        try:
            history = train(job)
        finally:
            job.dist.stop()
        if adapters is not None:
            adapters.merge()
        after = measure()
    model, note = _callers_class(models, models.student)
    return RecoveryResult(model, before, after, history, tuple(evaluations), tuple(t.node for t in taps),
                          "eval_data" if held_out is not None else f"the first {fidelity_batches} batches of data",
                          time.perf_counter() - start, job.dist.world, checkpoint_path(checkpoints), note,
                          _report(models.result, before, after), adapters.names if adapters else ())


@contextmanager
def _borrowed(teacher: torch.nn.Module, *models: torch.nn.Module) -> Iterator[None]:
    """Within: `teacher` and `models` return no KV cache (distillation compares what they compute); after:
    `teacher` is back in the train/eval mode it had."""
    mode = teacher.training
    try:
        with cache_off(teacher, *models):
            yield
    finally:
        teacher.train(mode)


def _tapped(module: torch.nn.Module, taps) -> torch.nn.Module:
    """`module` returning (output, tapped values) when there are taps, else `module` itself."""
    return TappedGraph(module, tuple(t.node for t in taps)) if taps else module


def _lora(trainable, lora) -> LoRA | None:
    """The adapters' options for trainable="lora", None for "all"; InputError on anything else."""
    try:
        kind = Trainable(trainable)
    except ValueError:
        raise InputError(f"trainable must be one of {[t.value for t in Trainable]}, got {trainable!r}") from None
    if lora is not None and not isinstance(lora, LoRA):
        raise InputError(f"lora must be a graphprune.recovery.LoRA(rank=..., alpha=...), got {type(lora).__name__}")
    if kind is Trainable.ALL:
        if lora is not None:
            raise InputError("lora= options were given with trainable='all'; pass trainable='lora' to train "
                             "adapters, or leave lora out")
        return None
    return lora or LoRA()


def _batch_norm_mode(mode) -> BatchNormMode:
    try:
        return BatchNormMode(mode)
    except ValueError:
        raise InputError(f"batch_norm must be one of {[m.value for m in BatchNormMode]}, got {mode!r}") from None


def _check_evaluation(eval_every, eval_data) -> None:
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
        raise InputError(f"eval_every must be an int >= 0 (steps between evaluations), got {eval_every!r}")
    if eval_every and eval_data is None:
        raise InputError("eval_every needs eval_data: held-out batches to measure fidelity on")


def _schedule(schedule: Schedule | None, steps, epochs, lr) -> Schedule:
    schedule = schedule or Schedule()
    if steps is not None or epochs is not None:
        schedule = replace(schedule, steps=steps, epochs=epochs)
    return replace(schedule, lr=lr) if lr is not None else schedule


def _objective(losses: Losses, teacher: torch.nn.Module, data: Batches, positional: int, taps) -> Objective:
    """AUTO and the task weight resolved on the first batch (whose labels say whether there is a task)."""
    first = split(next(iter(data)), positional, data.where)
    with torch.no_grad():
        output = first.to(module_device(teacher)).run(teacher, "the teacher (dense model)")
    task = losses.task if losses.task is not None else (1.0 if first.labels is not None else 0.0)
    objective = Objective(losses, output_kind(losses, output), taps, task)
    objective.check_labels(first)
    return objective
