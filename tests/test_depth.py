"""Depth pruning (graphprune.depth): whole layers of small random Hugging Face BERT and Llama models.

A Llama layer whose output projections are zero is exactly the identity (pre-norm residual blocks), so
block influence must score it 0, remove it, and the pruned model must give the same logits and the same
generated tokens through the KV cache."""
import copy
import os

import numpy as np
import pytest
import torch

from graphprune.depth import BlockInfluence, LossIncrease, find_layer_list, prune_layers
from graphprune.errors import GraphPruneError, InputError

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")


def _bert(layers=4):
    torch.manual_seed(0)
    return transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64), add_pooling_layer=False).eval()


def _llama(identity_layer=None):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64)).eval()
    if identity_layer is not None:
        layer = model.model.layers[identity_layer]
        with torch.no_grad():
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


def _batches(n=2, length=10, pad_from=None):
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        mask = torch.ones(2, length, dtype=torch.long)
        if pad_from is not None:
            mask[1, pad_from:] = 0
        out.append({"input_ids": torch.randint(1, 100, (2, length), generator=g), "attention_mask": mask})
    return out


def test_block_influence_is_one_minus_token_cosine_of_hidden_states_without_padding():
    model = _bert()
    batches = _batches(pad_from=6)
    scores = BlockInfluence()(model, find_layer_list(model)[1], batches)
    expected = np.zeros(4)
    for b in batches:
        with torch.no_grad():
            states = model(**b, output_hidden_states=True).hidden_states  # states[k] enters layer k
        real = b["attention_mask"].bool()
        for k in range(4):
            cos = torch.nn.functional.cosine_similarity(states[k].double(), states[k + 1].double(), dim=-1)
            expected[k] += (1 - cos[real]).sum().item()
    expected /= sum(int(b["attention_mask"].sum()) for b in batches)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_bert_loses_its_least_influential_layers_in_a_copy():
    model = _bert()
    before = sum(p.numel() for p in model.parameters())
    batches = _batches()
    result = prune_layers(model, n=2, calibration=batches)
    assert result.layers == "encoder.layer"
    assert list(result.removed) == sorted(np.argsort(result.scores)[:2].tolist())
    assert len(result.model.encoder.layer) == 2 and result.model.config.num_hidden_layers == 2
    assert len(model.encoder.layer) == 4 and model.config.num_hidden_layers == 4  # the caller's model
    per_layer = sum(p.numel() for p in model.encoder.layer[0].parameters())
    assert result.params_before == before and result.params_after == before - 2 * per_layer
    assert result.params_after == sum(p.numel() for p in result.model.parameters())
    with torch.no_grad():
        assert result.model(**batches[0]).last_hidden_state.shape == model(**batches[0]).last_hidden_state.shape
    assert "removed" in result.summary()


def test_llama_identity_layer_is_removed_and_outputs_and_generation_are_unchanged():
    model = _llama(identity_layer=2)
    batches = [{"input_ids": b["input_ids"]} for b in _batches()]
    result = prune_layers(model, n=1, calibration=batches, score=BlockInfluence())
    assert result.removed == (2,) and result.scores[2] == pytest.approx(0.0, abs=1e-12)
    pruned = result.model
    assert pruned.config.num_hidden_layers == 3 and len(pruned.model.layers) == 3
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]
    if getattr(pruned.config, "layer_types", None) is not None:
        assert len(pruned.config.layer_types) == 3
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-4)
        generated = pruned.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
        reference = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
    assert generated.shape == (2, ids.shape[1] + 5)
    assert torch.equal(generated, reference)


def test_loss_increase_measures_the_loss_of_skipping_each_layer():
    model = _llama(identity_layer=1)
    batches = [(b["input_ids"],) for b in _batches()]

    def loss_fn(output, batch):
        return torch.nn.functional.cross_entropy(output.logits[:, :-1].reshape(-1, 100), batch[0][:, 1:].reshape(-1))

    result = prune_layers(model, n=1, calibration=batches, score=LossIncrease(loss_fn))

    def mean_loss(m):
        with torch.no_grad():
            return np.mean([loss_fn(m(*b, use_cache=False), b).item() for b in batches])

    base = mean_loss(model)
    for k in range(4):  # skipping layer k == the model built without it
        without = copy.deepcopy(model)
        without.model.layers = torch.nn.ModuleList([l for i, l in enumerate(without.model.layers) if i != k])
        without.config.num_hidden_layers = 3
        assert result.scores[k] == pytest.approx(mean_loss(without) - base, abs=1e-6)
    assert result.scores[1] == pytest.approx(0.0, abs=1e-6)
    assert result.removed == (int(np.argmin(result.scores)),)


class NoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.b(self.a(x))


def test_clear_errors():
    with pytest.raises(InputError, match="no nn.ModuleList of repeated layers"):
        prune_layers(NoLayers(), n=1, calibration=[(torch.randn(1, 4),)])
    model = _bert(layers=2)
    batches = _batches(n=1)
    with pytest.raises(InputError, match=r"n=2 layers to remove: give an integer in \[1, 1\]"):
        prune_layers(model, n=2, calibration=batches)
    with pytest.raises(InputError, match="calibration"):
        prune_layers(model, n=1, calibration=[])
    with pytest.raises(GraphPruneError, match="no such submodule"):
        prune_layers(model, n=1, calibration=batches, layers="encoder.blocks")
    with pytest.raises(InputError, match="not an nn.ModuleList"):
        prune_layers(model, n=1, calibration=batches, layers="embeddings")


def test_scoring_leaves_each_of_the_callers_modules_in_its_own_mode():
    model = _bert()
    model.encoder.layer[1].train()  # mixed: the model is in eval mode, one layer trains
    before = {name: m.training for name, m in model.named_modules()}
    prune_layers(model, n=1, calibration=_batches())
    assert {name: m.training for name, m in model.named_modules()} == before
