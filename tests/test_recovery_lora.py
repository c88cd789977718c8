"""recover(..., trainable="lora"): only low-rank adapters train, they are merged back, the result is a plain pruned
model."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.errors import InputError, MissingRuntimeError

RANK = 2


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.norm = nn.LayerNorm(64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.norm(self.fc1(x))))))


def _data(n: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 16, generator=g) for _ in range(n)]


def _weights(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    result = graphprune.prune_graph(MLP().eval(), torch.randn(1, 16), ratio=0.5, target="none")
    assert result.report.frontend == "fx"
    return result


@pytest.fixture
def peft():
    return pytest.importorskip("peft")


def _recover(result, **kwargs):
    kwargs = {"data": _data(6, 1), "eval_data": _data(2, 9), "steps": 20, "lr": 1e-2, "progress": False,
              "trainable": "lora", "lora": graphprune.LoRA(rank=RANK), **kwargs}
    return graphprune.recover(result, **kwargs)


def test_lora_trains_only_the_adapters_and_merges_a_rank_r_delta(mlp, peft, tmp_path):
    pruned = _weights(mlp.model)
    rec = _recover(mlp, checkpoints=graphprune.Checkpoints(str(tmp_path)))
    assert rec.history[-1].loss < rec.history[0].loss and rec.after.kl < rec.before.kl
    assert rec.after.cosine > rec.before.cosine
    assert rec.adapted_layers == ("fc1", "fc2", "head")
    # a plain pruned model: the caller's class, the pruned shapes, no peft module, nothing left frozen
    assert type(rec.model) is MLP and not rec.note
    assert {k: v.shape for k, v in _weights(rec.model).items()} == {k: v.shape for k, v in pruned.items()}
    assert not [m for m in rec.model.modules() if type(m).__module__.startswith("peft")]
    assert all(p.requires_grad for p in rec.model.parameters())
    # the checkpoint holds the adapters unmerged: the frozen weights unchanged, the merge W + (alpha / r) B A
    saved = torch.load(tmp_path / "recovery.pt", weights_only=True)
    assert len(saved["optimizer"]["state"]) == 2 * 3  # AdamW saw A and B of three layers, nothing else
    after, state = _weights(rec.model), {k.removeprefix("graph_module."): v for k, v in saved["model"].items()}
    for name in rec.adapted_layers:
        base = state[f"{name}.base_layer.weight"]
        a, b = state[f"{name}.lora_A.default.weight"], state[f"{name}.lora_B.default.weight"]
        assert torch.equal(base, pruned[f"{name}.weight"])
        assert torch.allclose(after[f"{name}.weight"], base + graphprune.LoRA(rank=RANK).scale * b @ a, atol=1e-6)
        delta = after[f"{name}.weight"] - pruned[f"{name}.weight"]
        assert delta.abs().max() > 0 and torch.linalg.matrix_rank(delta) <= RANK
    unchanged = [k for k in pruned if not any(k == f"{n}.weight" for n in rec.adapted_layers)]
    assert unchanged and all(torch.equal(after[k], pruned[k]) for k in unchanged)  # biases, LayerNorm
    x = torch.randn(3, 16)
    program = torch.export.export(rec.model, (x,))
    assert torch.allclose(program.module()(x), rec.model(x), atol=1e-6)


def test_lora_targets_name_the_layers_adapted(mlp, peft):
    pruned = _weights(mlp.model)
    rec = _recover(mlp, steps=3, lora=graphprune.LoRA(rank=RANK, targets=("fc2",)))
    after = _weights(rec.model)
    assert rec.adapted_layers == ("fc2",)
    assert [k for k in pruned if not torch.equal(after[k], pruned[k])] == ["fc2.weight"]
    named = r"'fc3', which is no nn.Linear the student calls \(close: fc2, fc1\); name some of: fc1, fc2, head"
    with pytest.raises(InputError, match=named):
        _recover(mlp, steps=1, lora=graphprune.LoRA(targets=("fc3",)))


def test_lora_checkpoints_resume_to_the_same_weights(mlp, peft, tmp_path):
    kwargs = {"steps": 6}
    straight = _recover(mlp, **kwargs)

    def interrupt(log):
        if log.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _recover(mlp, checkpoints=graphprune.Checkpoints(str(tmp_path), every=3), on_step=interrupt, **kwargs)
    assert torch.load(tmp_path / "recovery.pt", weights_only=True)["step"] == 3
    resumed = _recover(mlp, checkpoints=graphprune.Checkpoints(str(tmp_path), every=3, resume=True), **kwargs)
    assert [h.step for h in resumed.history] == list(range(1, 7))
    for k, v in _weights(straight.model).items():
        assert torch.allclose(v, resumed.model.state_dict()[k], atol=1e-6), k


@pytest.fixture(scope="module")
def llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=True)
    dense = transformers.LlamaForCausalLM(config).eval()
    result = graphprune.prune_graph(dense, (torch.randint(0, 64, (2, 12)),), ratio=0.5, target="none")
    g = torch.Generator().manual_seed(1)
    return dense, result, [{"input_ids": torch.randint(0, 64, (4, 12), generator=g)} for _ in range(4)]


def test_on_an_export_frontend_graph_lora_trains_the_rebuilt_callers_class(llama, peft):
    """The torch.export graph has aten.linear ops, no nn.Linear modules: recover(result, trainable="lora") trains
    result.module (which has them) against the caller's dense model, and says so."""
    dense, result, data = llama
    assert result.report.frontend.startswith("export")
    assert not any(isinstance(m, torch.nn.Linear) for m in result.model.modules())
    rec = graphprune.recover(result, data=data, steps=2, lr=1e-2, trainable="lora", progress=False)
    assert type(rec.model) is type(dense) and "model.layers.0.self_attn.q_proj" in rec.adapted_layers
    assert "caller's class" in rec.note and rec.matched_layers == ()  # outputs distilled, no graph features
    assert {k: v.shape for k, v in _weights(rec.model).items()} == {k: v.shape for k, v in _weights(result.module).items()}
    assert rec.report is not None and rec.report.recovery["after"]


def test_lora_on_the_rebuilt_llm_keeps_its_class_shapes_and_tied_head(llama, peft):
    dense, result, data = llama
    student = result.module
    pruned = _weights(student)
    rec = graphprune.recover(student, teacher=dense, data=data, steps=3, lr=1e-2, progress=False,
                             trainable="lora", lora=graphprune.LoRA(rank=RANK))
    assert type(rec.model) is type(dense) and "lm_head" not in rec.adapted_layers  # tied: skipped
    assert "model.layers.0.self_attn.q_proj" in rec.adapted_layers
    assert rec.model.lm_head.weight is rec.model.model.embed_tokens.weight
    assert rec.model.config.use_cache and dense.config.use_cache  # distilled without caches, configs as they were
    after = _weights(rec.model)
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in pruned.items()}
    delta = after["model.layers.0.mlp.down_proj.weight"] - pruned["model.layers.0.mlp.down_proj.weight"]
    assert delta.abs().max() > 0 and torch.linalg.matrix_rank(delta) <= RANK
    assert torch.equal(after["model.embed_tokens.weight"], pruned["model.embed_tokens.weight"])
    with pytest.raises(InputError, match="shared with another module"):
        graphprune.recover(student, teacher=dense, data=data, steps=1, trainable="lora",
                           lora=graphprune.LoRA(targets=("lm_head",)), progress=False)


def test_lora_without_peft_names_the_extra(mlp, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    with pytest.raises(MissingRuntimeError, match=r"pip install 'graphprune\[lora\]'"):
        _recover(mlp, steps=1)


def test_importing_graphprune_does_not_import_peft():
    code = "import sys, graphprune; print('peft' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


@pytest.mark.parametrize("kwargs, match", [
    ({"trainable": "adapters"}, "trainable must be one of"),
    ({"trainable": "all", "lora": graphprune.LoRA()}, "trainable='all'"),
    ({"lora": {"rank": 4}}, "lora must be a graphprune.recovery.LoRA"),
])
def test_bad_trainable_options_give_one_clear_error(mlp, kwargs, match):
    with pytest.raises(InputError, match=match):
        _recover(mlp, steps=1, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 0}, "LoRA.rank must be a positive int"),
    ({"alpha": -1}, "LoRA.alpha must be"),
    ({"dropout": 1.0}, r"LoRA.dropout is a probability in \[0, 1\)"),
    ({"targets": ()}, "LoRA.targets must be None or module names"),
])
def test_bad_lora_options_are_refused(kwargs, match):
    with pytest.raises(InputError, match=match):
        graphprune.LoRA(**kwargs)
