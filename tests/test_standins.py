"""Stand-ins: the analysed model's heavy layers are not computed, and every recorded shape and value is the one
a real run records; where a node computed from a stand-in reads values, the graph is recorded for real."""
import operator
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
import graphprune.analysis as analysis_module
from graphprune import standins
from graphprune.models import ZOO
from graphprune.modes import evaluating
from graphprune.copies import clone_module
from graphprune.trace import META_KEY, bind_inputs, record_values, trace

RULES = graphprune.default_rules()


class Heavy(nn.Module):
    """Convolutions and linear layers above HEAVY_MACS, with norms, an in-place ReLU, a residual add, a concat,
    pooling and a flatten between them."""

    def __init__(self, tail=None):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        self.body = nn.Conv2d(32, 32, 3, padding=1, padding_mode="reflect")
        self.side = nn.Conv2d(32, 8, 1)
        self.head = nn.Linear(40 * 8 * 8, 256)
        self.tail = tail

    def forward(self, x):
        h = self.relu(self.bn(self.stem(x)))
        h = h + self.body(h)
        h = torch.cat([h, self.side(h)], dim=1)
        h = F.adaptive_avg_pool2d(h, 8)
        out = self.head(torch.flatten(h, 1))
        return self.tail(out) if self.tail is not None else out


def recorded(model, x, record):
    """Every node's recorded meta after `record(gm, inputs)` on a fresh trace of `model` (`x`: a tensor or a tuple)."""
    gm = trace(clone_module(model, parameter_views=True), RULES.has_module_rule)
    inputs = bind_inputs(gm, x if isinstance(x, tuple) else (x,))
    with evaluating(gm):
        record(gm, inputs)
    return gm, {n.name: n.meta[META_KEY] for n in gm.graph.nodes}


def with_stand_ins(gm, inputs):
    standins.record_shapes(gm, inputs, RULES.for_call)


def stood_in(model, x) -> set[str]:
    """The layers of `model` (by name) whose forward did not run while its trace was recorded with stand-ins."""
    gm = trace(clone_module(model, parameter_views=True), RULES.has_module_rule)
    ran = set()
    for name, module in gm.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.forward = lambda *a, _m=module, _n=name, **k: (ran.add(_n), type(_m).forward(_m, *a, **k))[1]
    with evaluating(gm):
        with_stand_ins(gm, bind_inputs(gm, (x,)))
    return {n for n, m in gm.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))} - ran


X = torch.randn(1, 3, 64, 64)


def test_the_heavy_layers_stand_in_and_every_recorded_meta_is_the_real_one():
    model = Heavy().eval()
    _, real = recorded(model, X, record_values)
    _, fast = recorded(model, X, with_stand_ins)
    assert fast == real
    assert stood_in(model, X) == {"stem", "body"}  # 3.5 M and 38 M multiply-adds; side and head under HEAVY_MACS


def test_a_layer_below_the_threshold_is_computed():
    model = Heavy().eval()
    assert not stood_in(model, torch.randn(1, 3, 8, 8))  # 8x8: body (0.6 M) under HEAVY_MACS too


CONVS = {
    "valid": (nn.Conv2d(32, 32, 3, padding="valid"), (1, 32, 64, 64)),
    "same even kernel": (nn.Conv2d(32, 32, 4, padding="same", dilation=(1, 2)), (1, 32, 64, 64)),
    "strides apart": (nn.Conv2d(32, 48, (3, 5), stride=(1, 3), padding=(2, 0)), (1, 32, 64, 64)),
    "1x1": (nn.Conv2d(64, 128, 1), (2, 64, 32, 32)),
    "conv2d": (nn.Conv2d(32, 64, 3, stride=2, padding=1), (1, 32, 64, 64)),
    "dilated groups": (nn.Conv2d(32, 64, 3, padding=2, dilation=2, groups=4), (1, 32, 64, 64)),
    "same circular": (nn.Conv2d(32, 32, 5, padding="same", padding_mode="circular"), (1, 32, 64, 64)),
    "depthwise": (nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False), (1, 64, 256, 256)),
    "conv1d": (nn.Conv1d(64, 128, 7), (2, 64, 4096)),
    "conv3d": (nn.Conv3d(16, 32, 3, padding=1), (1, 16, 16, 32, 32)),
    "unbatched": (nn.Conv2d(32, 32, 3), (32, 64, 64)),
    "linear 3d": (nn.Linear(512, 1024), (2, 100, 512)),
}


@pytest.mark.parametrize("name", sorted(CONVS))
def test_a_stand_in_has_the_shape_dtype_and_strides_of_the_real_output(name):
    layer, shape = CONVS[name]
    x = torch.randn(shape)
    rule = RULES.for_module(layer)
    stand_in = rule.stand_in(layer, (x,), {})
    with torch.no_grad():
        real = layer(x)
    assert stand_in is not None
    assert (stand_in.shape, stand_in.stride(), stand_in.dtype) == (real.shape, real.stride(), real.dtype)
    assert not stand_in.any()


@pytest.mark.parametrize("batch_first", [True, False])
def test_self_attention_without_weights_stands_in(batch_first):
    mha = nn.MultiheadAttention(256, 8, batch_first=batch_first).eval()
    x = torch.randn(2, 100, 256) if batch_first else torch.randn(100, 2, 256)
    rule = RULES.for_module(mha)
    out, weights = rule.stand_in(mha, (x, x, x), {"need_weights": False})
    with torch.no_grad():
        real, real_weights = mha(x, x, x, need_weights=False)
    assert (out.shape, out.stride(), out.dtype, weights) == (real.shape, real.stride(), real.dtype, real_weights)
    assert rule.stand_in(mha, (x, x, x), {}) is None  # the averaged weights are asked for: computed
    assert rule.stand_in(mha, (x, x, x), {"need_weights": False, "attn_mask": torch.ones(100, 100)}) is None


class Encoder(nn.Module):
    """A transformer block as torchvision's ViT writes it: attention asked for no weights, an MLP."""

    def __init__(self):
        super().__init__()
        self.norm, self.attention = nn.LayerNorm(256), nn.MultiheadAttention(256, 8, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))

    def forward(self, x):
        h = self.norm(x)
        h, _ = self.attention(h, h, h, need_weights=False)
        x = x + h
        return x + self.mlp(x)


def test_a_transformer_block_records_the_real_metas_with_its_layers_standing_in():
    x = torch.randn(2, 100, 256)
    _, real = recorded(Encoder().eval(), x, record_values)
    gm, fast = recorded(Encoder().eval(), x, with_stand_ins)
    assert fast == real
    gm = trace(clone_module(Encoder().eval(), parameter_views=True), RULES.has_module_rule)
    with evaluating(gm):
        assert standins.record_shapes(gm, bind_inputs(gm, (x,)), RULES.for_call) == 3  # attention and both linears


def test_a_call_the_op_rejects_is_computed_so_that_its_own_error_speaks():
    layer = nn.Conv2d(32, 64, 3)
    assert RULES.for_module(layer).stand_in(layer, (torch.randn(1, 16, 64, 64),), {}) is None  # 16 channels, not 32
    assert RULES.for_module(layer).stand_in(layer, (torch.randn(1, 32, 2, 64),), {}) is None  # smaller than the kernel
    for bad in (nn.Conv2d(32, 64, 3, dilation=0), nn.Conv2d(32, 64, 3, stride=0)):
        assert RULES.for_module(bad).stand_in(bad, (torch.randn(1, 32, 64, 64),), {}) is None
    linear = nn.Linear(512, 1024)
    assert RULES.for_module(linear).stand_in(linear, (torch.randn(64, 256),), {}) is None


def test_stand_ins_import_nothing_heavy():
    """Shapes come from the rules, not torch's meta kernels, whose first call imports sympy (~0.4 s)."""
    code = ("import sys, torch, graphprune\n"
            "class M(torch.nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            "        self.a, self.b = torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.Conv2d(32, 32, 3, padding=1)\n"
            "    def forward(self, x):\n"
            "        h = self.b(self.a(x))\n"
            "        return h[:, :16] + h[:, 16:]\n"  # watched: getitem reads no values, but has no such rule
            "graphprune.prune_graph(M().eval(), torch.randn(1, 3, 64, 64), ratio=0.5)\n"
            "print('sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_layer_in_another_memory_format_is_computed():
    layer, x = nn.Conv2d(32, 64, 3, padding=1), torch.randn(1, 32, 64, 64)
    assert RULES.for_module(layer).stand_in(layer, (x.contiguous(memory_format=torch.channels_last),), {}) is None
    assert RULES.for_module(layer).stand_in(layer.to(memory_format=torch.channels_last), (x,), {}) is None


def test_functional_spellings_stand_in_too():
    x, w, b = torch.randn(1, 32, 64, 64), torch.randn(64, 8, 3, 3), torch.randn(64)
    conv = RULES.for_node(trace(_Functional(w, b), RULES.has_module_rule).graph.find_nodes(
        op="call_function", target=F.conv2d)[0], {})
    stand_in = conv.stand_in(F.conv2d, (x, w, b, 1, 1, 1, 4), {})
    assert stand_in.shape == F.conv2d(x, w, b, 1, 1, 1, 4).shape
    _, real = recorded(_Functional(w, b), x, record_values)
    _, fast = recorded(_Functional(w, b), x, with_stand_ins)
    assert fast == real


class _Functional(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, x):
        return F.linear(F.conv2d(x, self.w, self.b, 1, 1, 1, 4).flatten(2), torch.ones(512, 4096))


class Masked(nn.Module):
    """Keeps the positive activations: how many there are is a value."""

    def forward(self, h):
        return h[h > 0]


class ToList(nn.Module):
    def forward(self, h):
        return h.mean(1).tolist()


class Accumulates(nn.Module):
    """Writes the activations into a buffer: the model's state, from values."""

    def __init__(self):
        super().__init__()
        self.register_buffer("seen", torch.zeros(256))

    def forward(self, h):
        self.seen.add_(h[0])
        return h


class AddsInto(nn.Module):
    """An add (an op that reads no values) writing its sum into a buffer (`out=`)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("total", torch.ones(256))

    def forward(self, h):
        torch.add(self.total, h[0], out=self.total)
        return h


@torch.fx.wrap
def _user_reads(h):
    return h * len([v for v in h.flatten().tolist() if v > 0])


class UserFunction(nn.Module):
    def forward(self, h):
        return _user_reads(h)


@pytest.mark.parametrize("tail", [Masked, ToList, Accumulates, AddsInto, UserFunction])
def test_an_op_that_reads_the_values_of_a_stand_in_records_for_real(tail):
    model = Heavy(tail()).eval()
    assert not stood_in(model, X)  # the stand-in run stopped: recorded again, every layer computed
    gm_real, real = recorded(model, X, record_values)
    gm_fast, fast = recorded(model, X, with_stand_ins)
    assert fast == real
    for a, b in zip(gm_real.buffers(), gm_fast.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class BiasTable(nn.Module):
    """A table computed by a layer, then indexed by a constant integer index (Swin-V2's relative position bias)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("index", torch.randint(0, 256, (32, 32)))

    def forward(self, h):
        return h[:, self.index]


def test_a_computed_table_indexed_by_integers_keeps_its_stand_in():
    model = Heavy(BiasTable()).eval()
    _, real = recorded(model, X, record_values)
    _, fast = recorded(model, X, with_stand_ins)
    assert fast == real
    assert stood_in(model, X) == {"stem", "body"}


def test_a_hooked_layer_is_computed():
    model = Heavy().eval()
    model.body.register_forward_hook(lambda module, args, out: out.mean(1, keepdim=True))  # a new shape, broadcast
    _, real = recorded(model, X, record_values)
    _, fast = recorded(model, X, with_stand_ins)
    assert fast == real
    assert "body" not in stood_in(model, X)


def test_wrong_example_inputs_still_name_the_node_that_failed():
    with pytest.raises(graphprune.errors.InputError, match="stem"):
        graphprune.prune_graph(Heavy().eval(), torch.randn(1, 4, 64, 64), ratio=0.5)


def test_pruning_with_stand_ins_gives_the_model_a_real_recording_gives(monkeypatch):
    model = Heavy(nn.Sequential(nn.ReLU(), nn.Linear(256, 10))).eval()
    fast = graphprune.prune_graph(model, X, ratio=0.5, target="none")
    monkeypatch.setattr(analysis_module, "record_shapes",
                        lambda gm, inputs, rule_of, raise_rule_errors: record_values(gm, inputs))
    real = graphprune.prune_graph(model, X, ratio=0.5, target="none")
    assert fast.plan.keep == real.plan.keep
    assert fast.report.params_after == real.report.params_after and fast.report.macs_after == real.report.macs_after
    for (name, a), (_, b) in zip(fast.model.state_dict().items(), real.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(fast.model(X), real.model(X), rtol=0, atol=0)


class _StandInBug(graphprune.rules.linear.LinearRule):
    """The linear layers' rule with a bug in its stand-in."""

    def stand_in(self, op, args, kwargs):
        raise ZeroDivisionError("a bug in the rule")


WIDE = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512))  # 105 M multiply-adds each at (2, 100, 512)
WIDE_X = torch.randn(2, 100, 512)


def test_a_stand_in_that_raises_names_its_rule_and_node_when_rule_errors_raise():
    buggy = RULES.with_rule(nn.Linear, _StandInBug(graphprune.rules.linear.LinearModule()))
    named = r"_StandInBug failed to stand in for `_0`.*ZeroDivisionError"
    with pytest.raises(graphprune.errors.RuleError, match=named):  # the suite sets GRAPHPRUNE_RULE_ERRORS=raise
        graphprune.prune_graph(WIDE.eval(), WIDE_X, ratio=0.5, rules=buggy)


def test_a_stand_in_that_raises_leaves_its_layer_computed_otherwise(monkeypatch):
    monkeypatch.delenv("GRAPHPRUNE_RULE_ERRORS")
    buggy = RULES.with_rule(nn.Linear, _StandInBug(graphprune.rules.linear.LinearModule()))
    gm = trace(clone_module(WIDE.eval(), parameter_views=True), buggy.has_module_rule)
    inputs = bind_inputs(gm, (WIDE_X,))
    runs = []

    def recording(gm, inputs, run=None):
        runs.append(run)
        return record_values(gm, inputs, run)
    monkeypatch.setattr(standins, "record_values", recording)
    with evaluating(gm):
        assert standins.record_shapes(gm, inputs, buggy.for_call) == 0  # no layer stood in ...
    assert len(runs) == 1  # ... and the graph was recorded once: each layer was computed where its stand-in failed
    _, real = recorded(WIDE.eval(), WIDE_X, record_values)
    assert {n.name: n.meta[META_KEY] for n in gm.graph.nodes} == real
    with pytest.raises(graphprune.errors.RuleError, match="_StandInBug"):
        graphprune.prune_graph(WIDE.eval(), WIDE_X, ratio=0.5, rules=buggy, strict=True)
    result = graphprune.prune_graph(WIDE.eval(), WIDE_X, ratio=0.5, rules=buggy)
    expected = graphprune.prune_graph(WIDE.eval(), WIDE_X, ratio=0.5)
    assert result.plan.keep == expected.plan.keep
    assert torch.equal(result.model(WIDE_X), expected.model(WIDE_X))


# -- light ops past a stand-in: norms, activations and sums read a stand-in's values, so they stand in too -----------
LIGHT_MODULES = [nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU6(inplace=True), nn.GELU(), nn.GELU("tanh"), nn.SiLU(),
                 nn.SiLU(inplace=True), nn.Sigmoid(), nn.Tanh(), nn.Hardswish(), nn.Hardswish(inplace=True),
                 nn.Hardsigmoid(), nn.Hardtanh(-2.0, 2.0), nn.LeakyReLU(0.1, inplace=True), nn.ELU(), nn.SELU(inplace=True),
                 nn.Mish(), nn.Softplus(beta=2.0), nn.Identity(), nn.Dropout(0.3).eval(), nn.BatchNorm2d(8).eval()]
LAYOUTS = {
    "contiguous": lambda: torch.randn(2, 8, 5, 6),
    "channels last": lambda: torch.randn(2, 8, 5, 6).to(memory_format=torch.channels_last),
    "float64": lambda: torch.randn(2, 8, 5, 6, dtype=torch.float64),
}


def _light_stand_in(op, args):
    return RULES.for_call(_call_node(op), op).stand_in_past_stand_ins(op, args, {})


def _call_node(op):
    """A call node of `op` (module or function) in a throwaway graph, for the rule table's lookup."""
    graph = torch.fx.Graph()
    if isinstance(op, nn.Module):
        return graph.call_module("m", (graph.placeholder("x"),))
    return graph.call_function(op, (graph.placeholder("a"), graph.placeholder("b")))


def _same_output(stand_in, real, inputs):
    """The stand-in is what the op returns but its values: the input itself where the op returns it, else zeros of
    the real output's shape, dtype and strides."""
    assert stand_in is not None
    assert [stand_in is x for x in inputs] == [real is x for x in inputs]
    assert (stand_in.shape, stand_in.stride(), stand_in.dtype) == (real.shape, real.stride(), real.dtype)
    if all(real is not x for x in inputs):
        assert not stand_in.any()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("index", range(len(LIGHT_MODULES)), ids=lambda i: repr(LIGHT_MODULES[i]))
def test_a_light_module_past_a_stand_in_stands_in_as_what_it_returns(index, layout):
    module = LIGHT_MODULES[index].to(LAYOUTS[layout]().dtype)
    x = LAYOUTS[layout]()
    stand_in = _light_stand_in(module, (x,))
    with torch.no_grad():
        real = module(x)
    _same_output(stand_in, real, (x,))


ARITHMETIC = [operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("op", ARITHMETIC, ids=lambda op: op.__name__)
def test_a_sum_past_a_stand_in_stands_in_as_what_it_returns(op, layout):
    a, b = LAYOUTS[layout](), LAYOUTS[layout]()
    stand_in = _light_stand_in(op, (a, b))
    with torch.no_grad():
        real = op(a, b)
    _same_output(stand_in, real, (a, b))


@pytest.mark.parametrize("op, args", [
    (nn.BatchNorm2d(8), (torch.randn(2, 8, 5, 6),)),  # training mode: batch statistics, and the running ones move
    (nn.BatchNorm2d(8).eval(), (torch.randn(2, 6, 5, 6),)),  # the op's own error about the channel count must speak
    (nn.BatchNorm2d(8).eval(), (torch.randn(8, 5, 6),)),  # and about the dims it takes
    (nn.BatchNorm1d(8).eval().double(), (torch.randn(2, 8),)),  # dtypes that do not match
    (nn.ReLU(), (torch.randint(0, 5, (2, 8, 5, 6)),)),  # not a float tensor
    (nn.ReLU(), (torch.randn(2, 8, 5, 12)[..., ::2],)),  # not laid out densely: the output's strides differ
    (type("MyReLU", (nn.ReLU,), {})(), (torch.randn(2, 8, 5, 6),)),  # a subclass may compute anything
    (nn.Dropout(0.3), (torch.randn(2, 8, 5, 6),)),  # training mode
    (operator.add, (torch.randn(2, 8, 5, 6), torch.randn(8, 1, 1))),  # broadcasts
    (operator.add, (torch.randn(2, 8, 5, 6), torch.randn(2, 8, 5, 6, dtype=torch.float64))),  # promotes
    (operator.add, (torch.randn(2, 8, 5, 6), torch.randn(2, 8, 5, 6).to(memory_format=torch.channels_last))),
    (operator.add, (torch.randn(2, 8, 5, 6), 1.0)),
    (operator.pow, (torch.randn(2, 8, 5, 6), torch.randn(2, 8, 5, 6))),
    (operator.iadd, (torch.randn(2, 8, 5, 6), torch.randn(2, 8, 5, 6))),  # in place
])
def test_a_light_op_is_computed_where_a_stand_in_could_differ_from_what_it_returns(op, args):
    assert _light_stand_in(op, args) is None


class LightAfterHeavy(nn.Module):
    """A heavy convolution (stood in) and a light one (computed), each followed by a norm, an activation and a sum."""

    def __init__(self):
        super().__init__()
        self.heavy, self.light = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(3, 32, 1)
        self.heavy_bn, self.light_bn = nn.BatchNorm2d(32), nn.BatchNorm2d(32)
        self.relu = nn.ReLU()

    def forward(self, x):
        light = self.relu(self.light_bn(self.light(x)))
        return light + self.relu(self.heavy_bn(self.heavy(x)))


def test_light_ops_stand_in_only_past_a_stand_in():
    model = LightAfterHeavy().eval()
    gm = trace(clone_module(model, parameter_views=True), RULES.has_module_rule)
    ran = []
    for name in ("heavy_bn", "light_bn"):
        module = gm.get_submodule(name)
        module.forward = lambda *a, _m=module, _n=name: (ran.append(_n), type(_m).forward(_m, *a))[1]
    with evaluating(gm):
        with_stand_ins(gm, bind_inputs(gm, (X,)))
    assert ran == ["light_bn"]  # its input was computed: so is it
    _, real = recorded(model, X, record_values)
    _, fast = recorded(model, X, with_stand_ins)
    assert fast == real


class SumInto(nn.Module):
    """total.add_(h) as a layer: writes the sum into its first input and returns it."""

    def forward(self, total, h):
        return total.add_(h)


class SumIntoRule(graphprune.rules.elementwise.BinaryRule):
    """Stands in for SumInto as what it returns: its first input."""

    def stand_in_past_stand_ins(self, op, args, kwargs):
        return args[0] if isinstance(op, SumInto) else None


class SumsIntoBuffer(nn.Module):
    """A buffer that a layer sums a stand-in into: a tensor computed for real."""

    def __init__(self):
        super().__init__()
        self.heavy, self.sum_into = nn.Conv2d(3, 32, 3, padding=1), SumInto()
        self.register_buffer("total", torch.ones(1, 32, 64, 64))

    def forward(self, x):
        return self.sum_into(self.total, self.heavy(x)) * 2


def test_a_stand_in_returning_an_input_computed_for_real_is_not_taken():
    """An op that writes a stand-in's values into a tensor computed for real (here a buffer) is computed, whatever its
    rule's stand-in, so the model keeps the state a real run leaves."""
    rules = RULES.with_rule(SumInto, SumIntoRule())
    model = SumsIntoBuffer().eval()
    runs = {}
    for name, record in (("real", record_values), ("fast", lambda gm, inputs: standins.record_shapes(gm, inputs, rules.for_call))):
        gm = trace(clone_module(model, parameter_views=True), rules.has_module_rule)
        with evaluating(gm):
            record(gm, bind_inputs(gm, (X,)))
        runs[name] = gm, {n.name: n.meta[META_KEY] for n in gm.graph.nodes}
    (gm_real, real), (gm_fast, fast) = runs["real"], runs["fast"]
    assert fast == real
    torch.testing.assert_close(gm_fast.total, gm_real.total, rtol=0, atol=0)
    assert not torch.equal(gm_fast.total, model.total)  # the sum was written


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_model_records_the_real_metas_with_stand_ins(name):
    spec = ZOO[name]
    model, x = spec.build().eval(), spec.example_inputs()
    _, real = recorded(model, x, record_values)
    _, fast = recorded(model, x, with_stand_ins)
    assert fast == real
