"""The recovery training loop: AdamW over micro-batches, checkpoints, resume, NaN guard, DDP.

One optimizer step = `accumulate` micro-batches per process; each micro-batch runs the teacher
(no gradients) and the student, and backpropagates objective / accumulate. Before each step the
gradient norm (identical on every rank after DDP's all-reduce) is checked: a NaN or infinite norm
stops the run with a RecoveryError naming the step, before the weights change, so the student and
the checkpoint hold the last good weights. Checkpoints are one file written atomically by rank 0;
an interrupted run (Ctrl-C) leaves the last one intact, and `resume` continues from it with the same
data position, optimizer and schedule state.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

from ..atomic import write_atomically
from ..errors import InputError, RecoveryError, first_line
from ..passes.recalibrate import reestimating_batchnorm
from .batches import Batch, Batches, split
from .distributed import Distributed
from .fidelity import compared
from .losses import Losses, OutputLoss, feature_loss, hidden_loss, kl_loss, task_loss, token_loss, token_states
from .options import BatchNormMode, Checkpoints, Schedule
from .progress import Progress
from .taps import Tap

CHECKPOINT_FILE = "recovery.pt"
REESTIMATE_BATCHES = 32


@dataclass(frozen=True)
class StepLog:
    step: int  # optimizer steps done
    loss: float  # mean over the step's micro-batches (and ranks)
    parts: Mapping[str, float]  # unweighted loss terms: output, features, task
    lr: float


@dataclass(frozen=True)
class Objective:
    """The weighted loss of recovery.losses, with AUTO and the task weight resolved for this model and data."""

    losses: Losses
    output: OutputLoss
    taps: tuple[Tap, ...] = ()
    task: float = 0.0

    def check_labels(self, batch: Batch) -> None:
        if self.task and batch.labels is None:
            raise InputError("the task loss is asked for (Losses(task=...) > 0) but the batches carry no labels; "
                             "give (inputs, labels) tuples or dicts with 'labels', or set task=0")

    def __call__(self, student_out, teacher_out, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        (s, s_feats), (t, t_feats) = (student_out, teacher_out) if self.taps else ((student_out, ()), (teacher_out, ()))
        parts, total = {}, 0.0
        if self.output is not OutputLoss.NONE and self.losses.output_weight:
            sc, tc = compared(s, batch, self.losses.readout), compared(t, batch, self.losses.readout).detach()
            if sc.shape != tc.shape:
                raise InputError(f"the student's compared output has shape {tuple(sc.shape)} and the teacher's "
                                 f"{tuple(tc.shape)}: recover a model from its own dense model (same outputs)")
            parts["output"] = kl_loss(sc, tc, self.losses.temperature) if self.output is OutputLoss.KL \
                else hidden_loss(sc, tc)
            total = total + self.losses.output_weight * parts["output"]
        if self.losses.tokens:
            st, tt = token_states(self.losses, s, batch.raw), token_states(self.losses, t, batch.raw).detach()
            parts["tokens"] = token_loss(st, tt)
            total = total + self.losses.tokens * parts["tokens"]
        if self.taps and self.losses.features:
            parts["features"] = feature_loss(s_feats, tuple(f.detach() for f in t_feats), self.taps)
            total = total + self.losses.features * parts["features"]
        if self.task:
            self.check_labels(batch)
            parts["task"] = task_loss(self.losses, s, batch.labels)
            total = total + self.task * parts["task"]
        if not parts:
            raise InputError("every loss weight is 0: nothing to recover on; give output_weight, tokens, features or "
                             "task > 0")
        return total, parts


@dataclass(frozen=True)
class TrainingJob:
    student: torch.nn.Module  # trained in place; returns (output, features) when the objective has taps
    teacher: torch.nn.Module  # eval mode, same return convention
    objective: Objective
    data: Batches
    positional: int
    schedule: Schedule
    checkpoints: Checkpoints
    batch_norm: BatchNormMode
    device: torch.device
    dist: Distributed
    bf16: bool = False
    evaluate: Callable[[int], None] | None = None  # called with the step number every `eval_every` steps
    eval_every: int = 0
    on_step: Callable[[StepLog], None] | None = None
    progress: bool | None = None


def micro_batches(data: Batches, rank: int, world: int, skip: int) -> Iterator:
    """Rank `rank`'s share of the data, cycled: global batches rank, rank + world, ...; the first `skip` dropped."""
    seen = 0
    while True:
        drawn = False
        for k, raw in enumerate(data):
            if k % world == rank:
                drawn = True
                if seen >= skip:
                    yield raw
                seen += 1
        if not drawn:
            raise InputError(f"{data.where} has fewer batches than the {world} processes; give at least one batch "
                             "per process")


def set_train_modes(module: torch.nn.Module, mode: BatchNormMode) -> None:
    module.train()
    if mode is not BatchNormMode.TRAIN:
        for m in module.modules():
            if isinstance(m, _BatchNorm):
                m.eval()


def reestimate_batchnorm(module: torch.nn.Module, data: Batches, positional: int, device: torch.device) -> None:
    """Running statistics of every BatchNorm re-estimated as the mean over up to REESTIMATE_BATCHES batches."""
    with reestimating_batchnorm(module) as any_norm:
        for k, raw in enumerate(data if any_norm else ()):
            if k == REESTIMATE_BATCHES:
                break
            split(raw, positional, data.where).to(device).run(module, "the student")


def checkpoint_path(checkpoints: Checkpoints) -> str | None:
    return os.path.join(checkpoints.directory, CHECKPOINT_FILE) if checkpoints.directory else None


def prepare_checkpoints(checkpoints: Checkpoints) -> None:
    """Create the checkpoint directory, or an InputError naming it; nothing else is written."""
    if checkpoints.directory is None:
        return
    try:
        os.makedirs(checkpoints.directory, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the checkpoint directory {checkpoints.directory!r}: {exc.strerror}; "
                         "give a writable directory") from None
    if not os.access(checkpoints.directory, os.W_OK | os.X_OK):
        raise InputError(f"the checkpoint directory {checkpoints.directory!r} is not writable; give a writable one")
    if checkpoints.resume and not os.path.exists(checkpoint_path(checkpoints)):
        raise InputError(f"resume=True but {checkpoint_path(checkpoints)!r} does not exist; run without resume first")


class _Loop:
    """State of one run: the optimizer, its schedule, the history; see the module docstring."""

    def __init__(self, job: TrainingJob):
        self.job = job
        self.params = [p for p in job.student.parameters() if p.requires_grad]
        if not self.params:
            raise InputError("the student has no trainable parameters (all have requires_grad=False)")
        s = job.schedule
        self.optimizer = torch.optim.AdamW(self.params, lr=s.lr, weight_decay=s.weight_decay)
        self.total = s.total_steps(len(job.data) if s.steps is None else 0, job.dist.world)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: s.lr_factor(k, self.total))
        self.history: list[StepLog] = []
        self.step = 0

    # -- checkpoints ------------------------------------------------------------------------------------
    def save(self) -> None:
        path = checkpoint_path(self.job.checkpoints)
        if path is not None and self.job.dist.is_main:
            state = {"step": self.step, "model": self.job.student.state_dict(),
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "history": [[h.step, h.loss, h.lr, dict(h.parts)] for h in self.history],
                     "rng": torch.get_rng_state()}
            write_atomically(path, lambda f: torch.save(state, f))
        self.job.dist.barrier()

    def load(self) -> None:
        path = checkpoint_path(self.job.checkpoints)
        try:
            state = torch.load(path, map_location=self.job.device, weights_only=True)
            self.job.student.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, KeyError, ValueError, EOFError) as exc:
            raise InputError(f"cannot resume from {path!r}: {type(exc).__name__}: {first_line(exc)}; it was "
                             "written for another model (or trainable=) or is damaged: remove it or run without "
                             "resume") from None
        torch.set_rng_state(state["rng"].cpu())
        self.step = int(state["step"])
        self.history = [StepLog(int(s), float(l), dict(p), float(r)) for s, l, r, p in state["history"]]

    # -- one step -----------------------------------------------------------------------------------------
    def micro_step(self, model: torch.nn.Module, raw) -> tuple[float, dict[str, float]]:
        job = self.job
        batch = split(raw, job.positional, job.data.where).to(job.device)
        with torch.autocast(job.device.type, dtype=torch.bfloat16, enabled=job.bf16):
            with torch.no_grad():
                teacher_out = batch.run(job.teacher, "the teacher (dense model)")
            loss, parts = job.objective(batch.run(model, "the student (pruned model)"), teacher_out, batch)
        (loss / job.schedule.accumulate).backward()
        return float(loss.detach()), {k: float(v.detach()) for k, v in parts.items()}

    def mean_over_ranks(self, value: float) -> float:
        if self.job.dist.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.job.device)
        dist.all_reduce(t)
        return float(t) / self.job.dist.world

    def optimizer_step(self, loss: float, buffers: dict[str, torch.Tensor]) -> None:
        """Clip and step; on a NaN/inf gradient norm restore `buffers` (the running statistics the step's forwards
        updated), save the last good state and raise."""
        limit = self.job.schedule.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(self.params, limit if limit is not None else math.inf)
        if not math.isfinite(float(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for name, tensor in self.job.student.named_buffers():
                    tensor.copy_(buffers[name])
            self.save()  # parameters and buffers are the last good ones
            where = f"; the last good weights are in {checkpoint_path(self.job.checkpoints)!r}" \
                if self.job.checkpoints.directory else ""
            raise RecoveryError(f"recovery stopped at step {self.step + 1}: the loss is {loss:.4g} and the gradient "
                                f"norm {float(norm)}; the weights are those of step {self.step}{where}. Lower the "
                                "learning rate, check the data for NaN/inf, or use a smaller temperature")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self) -> tuple[StepLog, ...]:
        job = self.job
        torch.manual_seed(job.schedule.seed + job.dist.rank)
        if job.checkpoints.resume:
            self.load()
        model = job.dist.wrap(job.student, job.device)
        set_train_modes(job.student, job.batch_norm)
        job.teacher.eval()
        stream = micro_batches(job.data, job.dist.rank, job.dist.world, self.step * job.schedule.accumulate)
        progress = Progress(self.total, enabled=job.progress if job.dist.is_main else False, first=self.step)
        try:
            while self.step < self.total:
                self.one_step(model, stream)
                progress.update(self.step, self.history[-1].loss)
        finally:
            progress.close()
        if job.batch_norm is BatchNormMode.REESTIMATE:
            reestimate_batchnorm(job.student, job.data, job.positional, job.device)
        job.student.eval()
        self.save()
        return tuple(self.history)

    def one_step(self, model: torch.nn.Module, stream: Iterator) -> None:
        job = self.job
        buffers = {name: b.detach().clone() for name, b in job.student.named_buffers()}
        results = [self.micro_step(model, next(stream)) for _ in range(job.schedule.accumulate)]
        loss = sum(r[0] for r in results) / len(results)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer_step(loss, buffers)
        self.step += 1
        parts = {k: sum(r[1][k] for r in results) / len(results) for k in results[0][1]}
        self.history.append(StepLog(self.step, self.mean_over_ranks(loss), parts, lr))
        if job.on_step is not None:
            job.on_step(self.history[-1])
        if job.checkpoints.every and self.step % job.checkpoints.every == 0 and self.step < self.total:
            self.save()
        if job.evaluate is not None and job.eval_every and self.step % job.eval_every == 0:
            job.evaluate(self.step)


def train(job: TrainingJob) -> tuple[StepLog, ...]:
    """Run the job (see the module docstring); returns one StepLog per optimizer step, resumed ones included."""
    return _Loop(job).run()
