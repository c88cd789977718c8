"""Recurrent hidden units (nn.LSTM, nn.GRU): exact removal, measured sizes, ONNX parity, MACs, freezes."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import graphprune
from conftest import RandomScores
from graphprune.export import export_onnx
from graphprune.groups import Role, Slot
from graphprune.cost import count_macs
from graphprune.rules import default_rules
from graphprune.rules.recurrent import PrunedGRU, PrunedLSTM
from graphprune.trace import record_values, trace
from graphprune.verify import max_exactness_error

FEATURES, TIME, BATCH = 8, 10, 2


class Speech(nn.Module):
    """Conv1d front end over (batch, features, time) -> 2-layer LSTM/GRU -> Linear on the last step or all steps."""

    def __init__(self, cell=nn.LSTM, batch_first=True, all_steps=False, bidirectional=False):
        super().__init__()
        self.batch_first, self.all_steps = batch_first, all_steps
        self.conv = nn.Conv1d(FEATURES, 16, 3, padding=1)
        self.rnn = cell(16, 12, num_layers=2, batch_first=batch_first, bidirectional=bidirectional)
        self.head = nn.Linear(12 * (1 + bidirectional), 5)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = h.transpose(1, 2) if self.batch_first else h.permute(2, 0, 1)  # (B, T, C) or (T, B, C)
        out, _ = self.rnn(h)
        if not self.all_steps:
            out = out[:, -1] if self.batch_first else out[-1]
        return self.head(out)


class LastState(nn.Module):
    """A GRU read through its final state h_n[-1]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(FEATURES, 16, 3, padding=1)
        self.rnn = nn.GRU(16, 12, num_layers=2, batch_first=True)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        _, h = self.rnn(self.conv(x).transpose(1, 2))
        return self.head(h[-1])


class Conditioned(nn.Module):
    """An LSTM whose (h0, c0) the model computes from a second input, and whose c_n it reads."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(FEATURES, 16, 3, padding=1)
        self.init_h, self.init_c = nn.Linear(4, 12), nn.Linear(4, 12)
        self.rnn = nn.LSTM(16, 12, batch_first=True)
        self.head = nn.Linear(12, 5)

    def forward(self, x, z):
        h0, c0 = torch.tanh(self.init_h(z)).unsqueeze(0), self.init_c(z).unsqueeze(0)
        out, (_, c) = self.rnn(self.conv(x).transpose(1, 2), (h0, c0))
        return self.head(out[:, -1] + c[0])


class GivenState(nn.Module):
    """A GRU whose initial state is a model input: its units must stay."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(FEATURES, 12, batch_first=True)
        self.head = nn.Linear(12, 5)

    def forward(self, x, h0):
        out, _ = self.rnn(x.transpose(1, 2), h0)
        return self.head(out)


class Projected(nn.Module):
    """An LSTM with proj_size: not supported, so frozen."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(FEATURES, 16, 3, padding=1)
        self.rnn = nn.LSTM(16, 12, batch_first=True, proj_size=6)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        out, _ = self.rnn(self.conv(x).transpose(1, 2))
        return self.head(out)


SPEECH = [(nn.LSTM, True, False, False), (nn.GRU, True, True, False), (nn.LSTM, False, True, False),
          (nn.GRU, False, False, False), (nn.LSTM, True, True, True), (nn.GRU, False, False, True)]
_IDS = ["lstm-batch_first-last", "gru-batch_first-all", "lstm-seq_first-all", "gru-seq_first-last",
        "bidirectional-lstm", "bidirectional-gru"]


def _x():
    return torch.randn(BATCH, FEATURES, TIME)


def _numel(m):
    return sum(p.numel() for p in m.parameters())


def _units(gm, layer):
    """Hidden units of `layer` in the (possibly replaced) recurrent module `gm.rnn`."""
    rnn = gm.rnn
    w = rnn.layers[layer].weight_hh_l0 if isinstance(rnn, (PrunedLSTM, PrunedGRU)) else getattr(rnn, f"weight_hh_l{layer}")
    return w.shape[1]


def _check_exact_and_measured(model, inputs, result):
    r = result.report
    assert max_exactness_error(model, inputs, result) <= 1e-5
    assert r.params_before == _numel(model) and r.params_after == _numel(result.model) < r.params_before
    assert r.params_before - r.params_after == sum(g.params_removed for g in r.groups) + r.params_removed_dead_code
    with torch.no_grad():
        assert result.model(*inputs).shape == model(*inputs).shape


@pytest.mark.parametrize("cell,batch_first,all_steps,bidirectional", SPEECH, ids=_IDS)
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_hidden_units_are_removed_exactly(cell, batch_first, all_steps, bidirectional, ratio):
    model = Speech(cell, batch_first, all_steps, bidirectional).eval()
    x = _x()
    result = graphprune.prune_graph(model, x, ratio=ratio, importance=RandomScores(int(ratio * 10)), target="none")
    kept = 12 - int(round(12 * ratio))
    assert [_units(result.model, l) for l in (0, 1)] == [kept, kept]
    assert type(result.model.rnn) is cell and result.model.rnn.hidden_size == kept
    assert result.model.rnn.input_size == result.model.conv.out_channels < 16
    _check_exact_and_measured(model, (x,), result)


@pytest.mark.parametrize("cell,batch_first,all_steps,bidirectional", SPEECH, ids=_IDS)
def test_layers_of_different_widths_become_a_stack(cell, batch_first, all_steps, bidirectional):
    model = Speech(cell, batch_first, all_steps, bidirectional).eval()
    x = _x()
    layer0 = graphprune.prune_graph(model, x, ratio=0.5).graph.group_of(Slot("rnn.weight_hh_l0", 1, Role.CONSUMER))
    result = graphprune.prune_graph(model, x, ratio=0.25, ratios={layer0.id: 0.5}, importance=RandomScores(3),
                                    target="none")
    assert isinstance(result.model.rnn, PrunedLSTM if cell is nn.LSTM else PrunedGRU)
    assert all(layer.bidirectional == bidirectional for layer in result.model.rnn.layers)
    assert [_units(result.model, l) for l in (0, 1)] == [6, 9]
    _check_exact_and_measured(model, (x,), result)
    again = graphprune.prune_graph(result.model, x, ratio=0.3, importance=RandomScores(4), target="none")
    assert [_units(again.model, l) for l in (0, 1)] == [4, 6]
    _check_exact_and_measured(result.model, (x,), again)


def test_final_state_ties_every_layer():
    """h_n holds all layers in one tensor: reading it prunes the same units in each layer."""
    model, x = LastState().eval(), _x()
    result = graphprune.prune_graph(model, x, ratio=0.5, importance=RandomScores(1), target="none")
    g = result.graph
    assert g.group_of(Slot("rnn.weight_hh_l0", 1, Role.CONSUMER)) is g.group_of(Slot("rnn.weight_hh_l1", 1, Role.CONSUMER))
    assert [_units(result.model, l) for l in (0, 1)] == [6, 6]
    _check_exact_and_measured(model, (x,), result)


def test_initial_state_computed_by_the_model_is_pruned_with_the_units():
    model, inputs = Conditioned().eval(), (_x(), torch.randn(BATCH, 4))
    result = graphprune.prune_graph(model, inputs, ratio=0.5, importance=RandomScores(2), target="none")
    units = result.graph.group_of(Slot("rnn.weight_hh_l0", 1, Role.CONSUMER))
    assert Slot("init_h.weight", 0, Role.PRODUCER) in units.members and Slot("init_c.weight", 0, Role.PRODUCER) in units.members
    assert result.model.init_h.out_features == result.model.init_c.out_features == _units(result.model, 0) == 6
    _check_exact_and_measured(model, inputs, result)


def test_initial_state_from_a_model_input_freezes_the_units():
    model, inputs = GivenState().eval(), (_x(), torch.randn(1, BATCH, 12))
    result = graphprune.prune_graph(model, inputs, ratio=0.5, target="none")
    units = result.graph.group_of(Slot("rnn.weight_hh_l0", 1, Role.CONSUMER))
    assert units.frozen and any("model input `h0`" in r for r in units.frozen_reasons)
    assert result.model.rnn.hidden_size == 12
    with torch.no_grad():
        torch.testing.assert_close(result.model(*inputs), model(*inputs), rtol=0, atol=0)


def test_projected_lstm_freezes_with_the_reason_in_the_report():
    model, x, words = Projected().eval(), _x(), "has proj_size=6"
    result = graphprune.prune_graph(model, x, ratio=0.5, target="none")
    reasons = {gr.id: gr.frozen_reasons for gr in result.report.frozen_groups}
    into = result.graph.group_of(Slot("conv.weight", 0, Role.PRODUCER)).id  # the LSTM's input channels
    out = result.graph.group_of(Slot("head.weight", 1, Role.CONSUMER)).id  # what reads the LSTM's output
    for gid in (into, out):
        assert any(f"`rnn` (module `rnn`: LSTM) {words}" in r for r in reasons[gid])
    assert {n: p.shape for n, p in result.model.rnn.named_parameters()} == {n: p.shape for n, p in model.rnn.named_parameters()}
    assert result.report.params_after == result.report.params_before == _numel(result.model)


def _ort(path, *inputs):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)})


@pytest.mark.parametrize("cell,batch_first,all_steps,bidirectional,widths", [
    (nn.LSTM, False, True, False, "equal"), (nn.GRU, True, False, False, "equal"),
    (nn.LSTM, True, False, False, "different"), (nn.GRU, True, True, True, "different")])
def test_onnx_export_matches_in_onnx_runtime(tmp_path, cell, batch_first, all_steps, bidirectional, widths):
    model, x = Speech(cell, batch_first, all_steps, bidirectional).eval(), _x()
    ratios = {}
    if widths == "different":
        layer0 = graphprune.prune_graph(model, x, ratio=0.5).graph.group_of(Slot("rnn.weight_hh_l0", 1, Role.CONSUMER))
        ratios = {layer0.id: 0.5}
    result = graphprune.prune_graph(model, x, ratio=0.25, ratios=ratios, target="none")
    path = tmp_path / "rnn.onnx"
    exported = export_onnx(result.model, (x,), path, dynamic_batch=True)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count(cell.__name__) == 2  # one ONNX recurrent op per layer, not an unrolled loop
    x2 = torch.randn(BATCH + 1, FEATURES, TIME)
    (got,) = _ort(str(path), x2)
    with torch.no_grad():
        want = result.model(x2).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
    assert exported.max_abs_diff < 1e-4


def _macs(model, *inputs):
    gm = trace(model, default_rules().has_module_rule)
    record_values(gm, inputs)
    return count_macs(gm, default_rules())


def test_macs_against_hand_computed_values():
    # LSTM, 2 layers, I=5, H=7, batch 3, seq 4: per step and sample 4*7*(5+7) + 4*7*(7+7)
    lstm = nn.Sequential(nn.LSTM(5, 7, num_layers=2, batch_first=True))
    assert _macs(lstm, torch.randn(3, 4, 5)) == 3 * 4 * (4 * 7 * (5 + 7) + 4 * 7 * (7 + 7))
    # GRU, 1 layer, I=5, H=6, seq 4, batch 3 (seq first): 3*6*(5+6) per step and sample
    gru = nn.Sequential(nn.GRU(5, 6))
    assert _macs(gru, torch.randn(4, 3, 5)) == 4 * 3 * (3 * 6 * (5 + 6))
    # unbatched (seq 9, I 5)
    assert _macs(gru, torch.randn(9, 5)) == 9 * (3 * 6 * (5 + 6))
    # bidirectional, 2 layers: each direction of layer 1 reads both directions of layer 0 (I = 2*7)
    bi = nn.Sequential(nn.LSTM(5, 7, num_layers=2, bidirectional=True))
    assert _macs(bi, torch.randn(4, 3, 5)) == 4 * 3 * 2 * (4 * 7 * (5 + 7) + 4 * 7 * (2 * 7 + 7))


@pytest.mark.parametrize("directions", [1, 2])
def test_macs_after_pruning_follow_the_kept_widths(directions):
    model, x = Speech(nn.LSTM, True, False, directions == 2).eval(), _x()
    layer0 = graphprune.prune_graph(model, x, ratio=0.5).graph.group_of(Slot("rnn.weight_hh_l0", 1, Role.CONSUMER))
    result = graphprune.prune_graph(model, x, ratio=0.25, ratios={layer0.id: 0.5}, target="none")
    c, h0, h1 = result.model.conv.out_channels, _units(result.model, 0), _units(result.model, 1)
    assert (c, h0, h1) == (12, 6, 9)
    steps = BATCH * TIME
    d = directions
    expected = steps * c * FEATURES * 3 + steps * d * (4 * h0 * (c + h0) + 4 * h1 * (d * h0 + h1)) + BATCH * 5 * d * h1
    assert result.report.macs_after == expected
    assert graphprune.analyse(model, x).predict(result.plan).macs == expected


def test_callers_recurrent_module_is_untouched():
    model, x = Speech(nn.LSTM).eval(), _x()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y = model(x)
    graphprune.prune_graph(model, x, ratio=0.5, target="none")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(w is getattr(model.rnn, n) for w, n in zip(model.rnn._flat_weights, model.rnn._flat_weights_names))
    with torch.no_grad():
        assert torch.equal(model(x), y)
