"""Channel steps measured, not assumed: the step derivation, the cached profile, the Target it gives, bad input."""
import json
import os
import platform

import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.errors import InputError
from graphprune.rules import LayerKind
from graphprune.runtimes import Precision, Runtime
from graphprune.runtimes import calibration as cal
from graphprune.runtimes import profiles
from graphprune.runtimes.layers import ROUNDS, ConvLayer, LayerTimer
from graphprune.runtimes.calibration import calibrate
from graphprune.runtimes.profiles import cached_target, resolve_target
from graphprune.targets import ort_x86

TINY = (16, 24, 32)  # three counts: enough for steps 1, 8 and 16, fast to time


def blocked(block, overhead=0.05, per_channel=0.01, penalty=1.5):
    """Latency of a kernel that pads to `block` channels and, off the block, leaves its fast path."""
    def t(c):
        padded = -(-c // block) * block
        return (overhead + per_channel * padded) * (1.0 if c % block == 0 else penalty)
    return {c: t(c) for c in cal.default_counts(Runtime.ORT)}


@pytest.mark.parametrize("block", [1, 4, 8, 16])
def test_step_is_the_block_of_a_blocked_kernel(block):
    step, penalty = cal.derive_step(blocked(block))
    assert step == block
    assert penalty == 1.0 if block == 1 else penalty > 1.4  # every off-block count pays x1.5 plus the padding


def test_a_kernel_without_alignment_gets_step_one():
    step, penalty = cal.derive_step({c: 0.02 + 0.01 * c for c in range(32, 97)})
    assert (step, penalty) == (1, 1.0)


def test_small_differences_do_not_make_a_step():
    """Multiples of 8 being 1% faster is within the tolerance: alignment would cost channels for nothing."""
    t = {c: (0.02 + 0.01 * c) * (0.99 if c % 8 == 0 else 1.0) for c in range(32, 97)}
    assert cal.derive_step(t)[0] == 1
    assert cal.derive_step(t, tolerance=0.001)[0] == 8


@pytest.mark.parametrize("half, full, kept", [(0.95, 1.0, True), (0.90, 1.0, True), (0.6, 1.0, False)])
def test_one_block_is_kept_only_where_half_a_block_is_not_faster(half, full, kept):
    assert profiles.keeps_one_block({8: half, 16: full}) is kept
    assert profiles.keeps_one_block({}) is False  # step 1: nothing is narrow


def test_too_few_counts():
    with pytest.raises(InputError, match="fewer than two multiples"):
        cal.derive_step({33: 1.0})


def test_a_grid_is_timed_in_rotating_rounds():
    """Every layer gets its runs; each round starts one layer later, so a slow spell is shared."""
    order = []
    timer = LayerTimer(runs=10)
    times = timer._timed({k: (lambda k=k: order.append(k)) for k in "abc"})
    assert {k: len(t) for k, t in times.items()} == {"a": 10, "b": 10, "c": 10}
    timed = order[9:]  # after 3 warm-up runs each
    firsts = [timed[r * 6] for r in range(ROUNDS)]  # 2 runs x 3 layers per round
    assert firsts == ["a", "b", "c", "a", "b"]


def test_a_pass_spoilt_by_a_slow_spell_is_outvoted(cache, monkeypatch):
    """Each count's latency is the median over the passes: one uneven slow pass does not move the step."""
    blocked16 = blocked(16)
    spoilt = {c: t * (1.6 if c % 32 else 1.0) for c, t in blocked16.items()}  # makes 32 look like the step
    passes = iter([blocked16, blocked16, blocked16, spoilt, spoilt, spoilt, blocked16, blocked16, blocked16])

    def time_layers(self, layers):
        self.measured += len(layers)
        if all(isinstance(c, int) and c in blocked16 for c in layers) and len(layers) > 2:
            return dict(next(passes))
        return {c: 1.0 for c in layers}  # the narrow-layer convs

    monkeypatch.setattr(LayerTimer, "time_layers", time_layers)
    counts = cal.default_counts(Runtime.ORT)
    profile = cal.measure_profile(Runtime.ORT, Precision.FP32, counts=counts, passes=3)
    assert all(profile.steps[k] == 16 for k in LayerKind)
    assert cal.derive_step(spoilt)[0] == 32  # what the spoilt pass alone would have chosen


def test_time_layers_times_every_layer_of_a_grid():
    timer = LayerTimer(Runtime.ORT, Precision.FP32, runs=3)
    ms = timer.time_layers({c: ConvLayer(1, c, c, 8, 8, (3, 3), pad=(1, 1)) for c in (8, 64)})
    assert sorted(ms) == [8, 64] and timer.measured == 2
    assert 0 < ms[8] < ms[64]  # 64x the MACs


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    return tmp_path


def test_calibrate_measures_caches_and_reads_back(cache, monkeypatch):
    target = calibrate("ort", "fp32", counts=TINY, runs=3)
    assert target.name == "measured:ort/fp32/1t"
    (path,) = [cache / f for f in os.listdir(cache)]
    assert str(path) == profiles.profile_path(Runtime.ORT, Precision.FP32, 1)
    data = json.loads(path.read_text())
    assert data["runtime"] == "ort" and data["precision"] == "fp32" and data["threads"] == 1 and data["cpu"]
    assert data["runtime_version"] == Runtime.ORT.version()
    for kind in LayerKind:
        assert sorted(map(int, data["latency_ms"][kind.name])) == list(TINY)
        assert all(ms > 0 for ms in data["latency_ms"][kind.name].values())
    profile = profiles.load_profile(str(path))
    assert (target.dense_conv, target.grouped_conv, target.linear) == tuple(profile.steps[k] for k in LayerKind)
    step = profile.steps[LayerKind.DENSE_CONV]
    assert sorted(profile.narrow_ms) == ([step // 2, step] if step > 1 else [])  # narrow layers measured
    assert target.one_block == profiles.keeps_one_block(profile.narrow_ms)
    assert all(cal.derive_step(profile.latency_ms[k])[0] == profile.steps[k] for k in LayerKind)

    def no_measuring(*args, **kwargs):
        raise AssertionError("the cached profile should have been read")

    monkeypatch.setattr(cal, "measure_profile", no_measuring)
    assert calibrate(Runtime.ORT, Precision.FP32, counts=TINY) == target  # from the cache, nothing timed
    assert cached_target("ort", "fp32") == target
    with pytest.raises(AssertionError, match="should have been read"):
        calibrate("ort", "fp32", counts=(16, 32))  # another grid is measured again
    assert not [f for f in os.listdir(cache) if f.startswith(".")]  # written atomically, no temp left


def test_a_profile_cached_before_narrow_layers_were_measured_is_measured_again(cache):
    calibrate("ort", "fp32", counts=TINY, runs=3)
    path = profiles.profile_path(Runtime.ORT, Precision.FP32, 1)
    with open(path) as f:
        data = json.load(f)
    del data["narrow_ms"]
    with open(path, "w") as f:
        json.dump(data, f)
    assert profiles.load_profile(path) is None  # unreadable as a profile: calibrate measures it again
    calibrate("ort", "fp32", counts=TINY, runs=3)
    assert "narrow_ms" in json.loads(open(path).read())


def test_cache_is_keyed_by_runtime_precision_and_threads(cache):
    paths = {profiles.profile_path(r, p, t) for r in (Runtime.ORT,) for p in Precision for t in (1, 2)}
    assert len(paths) == 4 and all(p.startswith(str(cache)) for p in paths)


def test_auto_uses_the_measured_profile_else_the_rule(cache):
    assert cached_target() is None
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert resolve_target("auto") == ort_x86()  # no profile: the hand-written rule
    measured = calibrate("ort", "fp32", counts=TINY, runs=3)
    assert resolve_target("auto") == measured


def test_the_report_names_the_profile_that_chose_the_widths(cache):
    target = calibrate("ort", "fp32", counts=TINY, runs=3)
    model = nn.Sequential(nn.Conv2d(3, 40, 3), nn.ReLU(), nn.Conv2d(40, 8, 3)).eval()
    result = graphprune.prune_graph(model, torch.randn(1, 3, 12, 12), ratio=0.3, target=target)
    assert result.report.target == target.name == "measured:ort/fp32/1t"
    kept = result.model.get_submodule("0").out_channels
    assert kept < 40 and (target.dense_conv == 1 or kept % target.dense_conv == 0)


@pytest.mark.parametrize("kwargs, match", [
    ({"runtime": "tpu"}, "unknown runtime 'tpu'; use one of ort, openvino, executorch"),
    ({"precision": "fp16"}, "unknown precision 'fp16'"),
    ({"runtime": "ort,openvino"}, "one runtime and one precision"),
    ({"counts": (8,)}, "two or more positive ints"),
    ({"counts": (8, 0)}, "two or more positive ints"),
    ({"threads": 0}, "threads must be an int >= 1"),
    ({"passes": 0}, "passes must be an int >= 1"),
    ({"runs": True}, "runs must be an int >= 1"),
])
def test_bad_arguments(cache, kwargs, match):
    with pytest.raises(InputError, match=match):
        calibrate(**kwargs)
    assert os.listdir(cache) == []


@pytest.mark.edge
@pytest.mark.parametrize("runtime, precision", [("openvino", "fp32"), ("openvino", "int8"), ("executorch", "fp32")])
def test_calibrate_edge_runtimes(cache, runtime, precision):
    counts = (16, 32) if runtime == "executorch" else TINY  # ExecuTorch lowers one program per layer: slow
    target = calibrate(runtime, precision, counts=counts, runs=3, passes=1)
    assert target.name == f"measured:{runtime}/{precision}/1t"
    profile = profiles.load_profile(profiles.profile_path(Runtime(runtime), Precision(precision), 1))
    assert profile.runtime_version == Runtime(runtime).version()
    assert all(sorted(profile.latency_ms[k]) == list(counts) for k in LayerKind)
