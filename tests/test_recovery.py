"""The recovery stage: fidelity, distillation through the kept channels, the training engine, bad input."""
from __future__ import annotations

import io
import os

import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.errors import InputError, RecoveryError
from graphprune.recovery.progress import Progress
from graphprune.recovery.taps import TappedGraph, default_layers, make_taps
from graphprune.trace import capture_values
from recovery_support import ResidualCNN, images, pruned


def _weights(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- fidelity ---------------------------------------------------------------------------------------------
def test_fidelity_of_a_model_with_itself_is_perfect():
    model = ResidualCNN().eval()
    f = graphprune.fidelity(model, model, images(3, 8, seed=0, labels=True))
    assert f.rows == 24 and f.top1_agreement == 1.0 and f.top5_overlap == 1.0
    assert abs(f.kl) < 1e-6 and f.cosine == pytest.approx(1.0, abs=1e-6)
    assert f.accuracy == f.dense_accuracy


def test_fidelity_figures_match_their_definitions():
    dense, other = nn.Linear(4, 6), nn.Linear(4, 6)
    x = torch.randn(32, 4)
    y = torch.randint(0, 6, (32,))
    f = graphprune.fidelity(dense, other, [(x, y)])
    with torch.no_grad():
        t, s = dense(x), other(x)
    assert f.top1_agreement == pytest.approx(float((t.argmax(1) == s.argmax(1)).float().mean()))
    overlap = [len(set(t[i].topk(5).indices.tolist()) & set(s[i].topk(5).indices.tolist())) / 5 for i in range(32)]
    assert f.top5_overlap == pytest.approx(sum(overlap) / 32)
    kl = torch.nn.functional.kl_div(s.log_softmax(1), t.log_softmax(1), log_target=True, reduction="batchmean")
    assert f.kl == pytest.approx(float(kl), rel=1e-5)
    assert f.cosine == pytest.approx(float(torch.nn.functional.cosine_similarity(t, s).mean()), rel=1e-5)
    assert f.accuracy == pytest.approx(float((s.argmax(1) == y).float().mean()))


def test_fidelity_reads_hugging_face_style_outputs_and_readouts():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, input_ids, attention_mask=None):
            return {"last_hidden_state": self.proj(input_ids)}

    a, b = Encoder(), Encoder()
    batch = {"input_ids": torch.randn(2, 5, 8), "attention_mask": torch.ones(2, 5)}
    whole = graphprune.fidelity(a, b, [batch])
    pooled = graphprune.fidelity(a, b, [batch], readout=lambda out, raw: out["last_hidden_state"].mean(1))
    assert whole.rows == 10 and pooled.rows == 2


# -- feature taps ----------------------------------------------------------------------------------------
def test_a_pruned_producer_equals_the_dense_activation_at_its_kept_channels():
    _, result = pruned()
    x = torch.randn(4, 3, 12, 12)
    conv = next(n.name for n in result.model.graph.nodes if n.op == "call_module" and n.target == "stem")
    tap, = make_taps([conv], result.graph, result.plan)
    assert tap.kept, "the stem's output channels are pruned at ratio 0.5 (it reads the model input, unpruned)"
    dense = capture_values(result.dense, (x,), {conv})[conv]
    student = capture_values(result.model, (x,), {conv})[conv]
    assert student.shape[1] == 8 and torch.allclose(tap.teacher_view(dense), student, atol=1e-6)


def test_default_layers_are_the_residual_joins_and_both_graphs_run_tapped():
    _, result = pruned()
    names = default_layers(result.dense, result.model, result.graph, limit=8)
    assert names and all(result.dense.graph.find_nodes(op="call_function", target=__import__("operator").add)
                         for _ in names)
    x = torch.randn(2, 3, 12, 12)
    out, feats = TappedGraph(result.model, names)(x)
    assert torch.equal(out, result.model(x)) and len(feats) == len(names)


# -- recover ---------------------------------------------------------------------------------------------
def test_recover_raises_fidelity_and_returns_the_callers_class_leaving_inputs_untouched():
    model, result = pruned()
    before_model, before_pruned = _weights(model), _weights(result.model)
    rec = graphprune.recover(result, data=images(8, 16, seed=1), steps=40, lr=3e-3,
                             eval_data=images(4, 32, seed=2), eval_every=20, progress=False)
    assert isinstance(rec.model, ResidualCNN), rec.note
    assert rec.after.kl < 0.5 * rec.before.kl and rec.after.top1_agreement > rec.before.top1_agreement
    assert rec.history[-1].loss < rec.history[0].loss
    assert [step for step, _ in rec.evaluations] == [20, 40] and rec.evaluations[-1][1] == rec.after
    assert _same(_weights(model), before_model) and _same(_weights(result.model), before_pruned)
    assert rec.report.recovery["after"]["kl"] == rec.after.kl and "before -> after recovery" in rec.report.summary()
    x = torch.randn(5, 3, 12, 12)
    assert rec.model(x).shape == (5, 10)


def test_feature_distillation_is_on_by_default_at_the_default_layers():
    _, result = pruned()
    rec = graphprune.recover(result, data=images(4, 8, seed=1), steps=3, progress=False)
    assert rec.matched_layers and all("features" in h.parts for h in rec.history)
    assert "features matched at the kept channels: " + rec.matched_layers[0] in rec.summary()


def test_task_loss_is_used_when_batches_carry_labels():
    _, result = pruned()
    rec = graphprune.recover(result, data=images(4, 8, seed=1, labels=True), steps=2, progress=False)
    assert set(rec.history[0].parts) == {"output", "features", "task"} and rec.after.accuracy is not None


def test_frozen_and_reestimated_batch_norm():
    _, result = pruned()
    bn = "bn0.running_mean"
    frozen = graphprune.recover(result, data=images(4, 8, seed=1), steps=2, batch_norm="frozen", progress=False)
    assert torch.equal(frozen.model.state_dict()[bn], result.model.state_dict()[bn])
    data = images(4, 8, seed=1)
    again = graphprune.recover(result, data=data, steps=2, batch_norm="reestimate", progress=False)
    with torch.no_grad():
        stem = again.model.stem(torch.cat(data))
    assert torch.allclose(again.model.state_dict()[bn], stem.mean((0, 2, 3)), atol=1e-5)


def test_recovery_runs_on_a_pruned_module_with_an_explicit_teacher():
    model, result = pruned()
    rec = graphprune.recover(result.module, teacher=model, data=images(4, 8, seed=1), steps=3, progress=False)
    assert isinstance(rec.model, ResidualCNN) and not rec.matched_layers and rec.report is None


def test_iterative_pruning_recovers_between_steps():
    model, _ = pruned()
    seen = []

    def recover(result, step):
        seen.append(step)
        return graphprune.recover(result, data=images(2, 8, seed=step), steps=2, progress=False).model

    it = graphprune.prune_iteratively(model, torch.randn(1, 3, 12, 12), steps=2, ratio=0.5, target="none",
                                      recover=recover)
    assert seen == [1, 2] and isinstance(it.model, nn.Module)
    assert it.model(torch.randn(2, 3, 12, 12)).shape == (2, 10)


# -- the engine ------------------------------------------------------------------------------------------
def test_checkpoints_resume_after_an_interrupt_to_the_same_weights(tmp_path):
    _, result = pruned()
    kwargs = dict(data=images(6, 8, seed=1), steps=6, lr=1e-3, progress=False, eval_data=images(1, 8, seed=9))
    straight = graphprune.recover(result, **kwargs)

    def interrupt(log):
        if log.step == 4:
            raise KeyboardInterrupt

    directory = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        graphprune.recover(result, checkpoints=graphprune.Checkpoints(str(directory), every=3), on_step=interrupt,
                           **kwargs)
    assert os.listdir(directory) == ["recovery.pt"]
    assert torch.load(directory / "recovery.pt", weights_only=True)["step"] == 3
    resumed = graphprune.recover(result, checkpoints=graphprune.Checkpoints(str(directory), every=3, resume=True),
                                 **kwargs)
    assert [h.step for h in resumed.history] == list(range(1, 7))
    for k, v in _weights(straight.model).items():
        assert torch.allclose(v, resumed.model.state_dict()[k], atol=1e-6), k
    assert torch.load(directory / "recovery.pt", weights_only=True)["step"] == 6


def test_a_nan_loss_stops_naming_the_step_and_keeps_the_last_good_weights(tmp_path):
    _, result = pruned()
    data = images(4, 8, seed=1)
    data[2] = data[2].clone()
    data[2][0, 0, 0, 0] = float("nan")
    with pytest.raises(RecoveryError, match="step 3") as info:
        graphprune.recover(result, data=data, steps=5, progress=False, eval_data=images(1, 8, seed=2),
                           checkpoints=graphprune.Checkpoints(str(tmp_path)))
    assert "weights are those of step 2" in str(info.value)
    saved = torch.load(tmp_path / "recovery.pt", weights_only=True)
    assert saved["step"] == 2 and all(torch.isfinite(v).all() for v in saved["model"].values()
                                      if v.is_floating_point())


def test_progress_line_shows_step_loss_and_eta():
    out = io.StringIO()
    progress = Progress(10, stream=out, enabled=True)
    progress.update(5, 0.25)
    progress.close()
    assert "recover 5/10" in out.getvalue() and "loss 0.25" in out.getvalue() and "ETA" in out.getvalue()


# -- bad input: one clear error, nothing written -----------------------------------------------------------
@pytest.mark.parametrize("case, match", [
    ("empty", "empty"),
    ("teacher_cannot_run", "cannot run a batch"),
    ("labels_missing", "no labels"),
    ("unwritable", "checkpoint directory"),
    ("other_outputs", "shape"),
    ("resume_without_checkpoint", "does not exist"),
    ("bad_schedule", "steps must be"),
    ("eval_every_without_eval_data", "needs eval_data"),
])
def test_bad_input_gives_one_clear_error_and_writes_nothing(tmp_path, case, match):
    model, result = pruned()
    directory = tmp_path / "ckpt"
    kwargs = dict(data=images(2, 4, seed=1), steps=2, progress=False,
                  checkpoints=graphprune.Checkpoints(str(directory)))
    if case == "empty":
        kwargs["data"] = []
    elif case == "teacher_cannot_run":
        kwargs["data"] = [torch.randn(4, 5, 12, 12)]
    elif case == "labels_missing":
        kwargs["losses"] = graphprune.Losses(task=1.0)
    elif case == "unwritable":
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        kwargs["checkpoints"] = graphprune.Checkpoints(str(blocker / "sub"))
    elif case == "other_outputs":
        kwargs["teacher"] = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 5))
    elif case == "resume_without_checkpoint":
        kwargs["checkpoints"] = graphprune.Checkpoints(str(directory), resume=True)
    elif case == "bad_schedule":
        kwargs["steps"] = 0
    elif case == "eval_every_without_eval_data":
        kwargs["eval_every"] = 1
    with pytest.raises(InputError, match=match):
        graphprune.recover(result, **kwargs)
    assert not directory.exists() or case == "resume_without_checkpoint" and os.listdir(directory) == []


def test_the_token_loss_compares_every_real_token_and_leaves_padding_out_of_the_cosine():
    from graphprune.recovery.losses import Losses, relative_mse, token_loss, token_states

    torch.manual_seed(0)
    hidden = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    states = token_states(Losses(tokens=1.0), {"last_hidden_state": hidden}, {"attention_mask": mask})
    assert torch.equal(states[mask == 0], torch.zeros(3, 8)) and torch.equal(states[mask == 1], hidden[mask == 1])
    student = states + 0.1 * torch.randn_like(states) * mask.unsqueeze(-1)
    real = student[mask == 1], states[mask == 1]
    cosine = (1 - torch.nn.functional.cosine_similarity(*real, dim=1)).mean()
    torch.testing.assert_close(token_loss(student, states), relative_mse(student, states) + cosine)
    with pytest.raises(graphprune.GraphPruneError, match="Losses.tokens must be a finite number"):
        Losses(tokens=-1.0)


def test_a_hugging_face_dataset_is_read_as_torch_batches_with_labels():
    """A real `datasets.Dataset` (skipped where the package is absent): rows of `batch_size`, keyword inputs from its
    columns and `labels` as the task's labels, the last batch smaller."""
    datasets = pytest.importorskip("datasets")
    from graphprune.recovery.batches import Batches, split

    torch.manual_seed(0)
    table = datasets.Dataset.from_dict({"x": torch.randn(10, 4).tolist(), "labels": list(range(10))})
    batches = Batches(table, batch_size=4)
    assert len(batches) == 3 and [len(b["labels"]) for b in batches] == [4, 4, 2]
    first = split(next(iter(batches)), positional=0)
    assert first.kwargs["x"].shape == (4, 4) and first.labels.tolist() == [0, 1, 2, 3]

    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(x)

    dense = Keyword().eval()
    f = graphprune.fidelity(dense, dense, table)
    assert f.rows == 10 and f.top1_agreement == 1.0 and f.accuracy == f.dense_accuracy
