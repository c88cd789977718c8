"""ONNX Runtime benchmark harness: report contents, serialisation, clear errors. No timing asserts."""

import json
import math
import os

import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

import onnxruntime as ort

from graphprune.timing import (CPU, EDGE, BenchReport, Precision, Profile, Runtime, benchmark, benchmark_models,
                              cpu_name, plot_latency_vs_macs)
from graphprune.errors import BenchError, CalibrationError, InputError
from graphprune.export import export_onnx
from graphprune.quantize import is_quantized_onnx
from graphprune.runtimes import parse_precisions, parse_runtimes

WARMUP, REPEATS, ROUNDS = 2, 10, 2


def _tiny_cnn(width):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, 4),
    ).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny ONNX files ("wide", "narrow"), batch dim dynamic, and their MACs."""
    d = tmp_path_factory.mktemp("models")
    paths, macs = {}, {}
    for name, width in (("wide", 16), ("narrow", 4)):
        paths[name] = str(d / f"{name}.onnx")
        export_onnx(_tiny_cnn(width), torch.randn(2, 3, 16, 16), paths[name], dynamic_batch=True)
        macs[name] = 16 * 16 * width * 27 + width * 4
    return paths, macs


@pytest.fixture(scope="module", params=[EDGE, CPU], ids=["edge", "cpu"])
def report(request, models):
    paths, macs = models
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    result = benchmark(paths, request.param, warmup=WARMUP, repeats=REPEATS, rounds=ROUNDS,
                       macs=macs)
    if affinity is not None:
        assert os.sched_getaffinity(0) == affinity  # the caller is never re-pinned
    return result


def test_every_row_is_complete_and_consistent(report, models):
    paths, macs = models
    assert [r.name for r in report.rows] == list(paths)
    for r in report.rows:
        assert r.path == paths[r.name]
        assert r.runs == REPEATS == len(r.latencies_ms)
        assert all(t > 0 for t in r.latencies_ms)
        assert 0 < r.p50_ms <= r.p90_ms <= max(r.latencies_ms)
        assert min(r.latencies_ms) <= r.mean_ms <= max(r.latencies_ms)
        assert r.load_ms > 0
        assert r.peak_mem_bytes > 0
        assert r.file_bytes == os.path.getsize(r.path)
        assert r.macs == macs[r.name] and r.params is None


def test_report_states_the_protocol(report):
    assert report.warmup == WARMUP and report.repeats == REPEATS and report.rounds == ROUNDS
    assert report.profile.graph_optimization_level == "ORT_ENABLE_ALL"
    if report.profile.pin_core and hasattr(os, "sched_setaffinity"):
        assert report.pinned_core in os.sched_getaffinity(0)
    else:
        assert report.pinned_core is None or report.profile.pin_core
    names, header = report.format_table().splitlines()[:2]
    assert names == f"ONNX Runtime {report.runtime_version} on {report.cpu}"  # every figure names CPU and version
    assert report.runtime is Runtime.ORT and report.runtime_version == report.onnxruntime_version == ort.__version__
    assert report.cpu == cpu_name() and report.cpu
    assert f"{report.profile.intra_op_threads} thread(s)" in header
    assert "ORT_ENABLE_ALL" in header and "spinning off" in header


def test_json_round_trip(report, tmp_path):
    data = json.loads(json.dumps(report.to_json()))
    assert data["profile"]["name"] == report.profile.name
    assert BenchReport.from_json(data) == report
    path = tmp_path / "report.json"
    report.write_json(path)
    with open(path) as f:
        assert BenchReport.from_json(json.load(f)) == report
    assert os.listdir(tmp_path) == ["report.json"]


def test_table_has_every_variant_and_ratio(report):
    table = report.format_table()
    lines = table.splitlines()
    for col in ("variant", "p50 ms", "p90 ms", "mean ms", "load ms", "peak MB", "size MB",
                "p50 ratio", "GMACs"):
        assert col in table
    for r in report.rows:
        row = next(line for line in lines if line.startswith(r.name + " "))
        ratio = float(row.split()[7])
        assert math.isclose(ratio, r.p50_ms / report.rows[0].p50_ms, abs_tol=0.006)


def test_plot_writes_png(report, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "latency.png"
    report.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_macs_is_a_bench_error(models, tmp_path):
    pytest.importorskip("matplotlib")
    paths, _ = models
    report = benchmark({"wide": paths["wide"]}, EDGE, warmup=0, repeats=1, rounds=1)
    with pytest.raises(BenchError, match="macs"):
        report.plot(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_rounds_round_up_the_run_count(models):
    paths, _ = models
    report = benchmark(paths, EDGE, warmup=0, repeats=5, rounds=2)
    assert [r.runs for r in report.rows] == [6, 6]


def test_builtin_profiles():
    assert CPU.intra_op_threads == (os.cpu_count() or 1) and not CPU.pin_core
    assert EDGE.intra_op_threads == 1 and EDGE.pin_core
    with pytest.raises(BenchError, match="intra_op_threads"):
        Profile("x", intra_op_threads=0)
    with pytest.raises(BenchError, match="graph_optimization_level"):
        Profile("x", intra_op_threads=1, graph_optimization_level="FAST")


def _assert_clean_error(info, *needles):
    message = str(info.value)
    for needle in needles:
        assert needle in message
    assert "Traceback" not in message and "\n" not in message


@pytest.mark.parametrize("content", [os.urandom(4096), b"", "truncated"], ids=["random", "empty", "truncated"])
def test_corrupted_onnx_is_a_bench_error(models, tmp_path, content):
    paths, _ = models
    bad = tmp_path / "bad.onnx"
    if content == "truncated":
        data = open(paths["wide"], "rb").read()
        content = data[: len(data) // 2]
    bad.write_bytes(content)
    with pytest.raises(BenchError) as info:
        benchmark({"good": paths["wide"], "bad": bad}, EDGE, warmup=0, repeats=1, rounds=1)
    _assert_clean_error(info, "'bad'", str(bad), "not a valid ONNX model", "export_onnx")


def test_missing_path_is_a_bench_error(tmp_path):
    missing = tmp_path / "nowhere.onnx"
    with pytest.raises(BenchError) as info:
        benchmark({"m": missing}, EDGE)
    _assert_clean_error(info, str(missing), "does not exist")


def test_model_that_onnxruntime_cannot_load_is_a_bench_error(tmp_path):
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="example.custom")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(BenchError) as info:
        benchmark({"custom": path}, EDGE, warmup=0, repeats=1, rounds=1)
    _assert_clean_error(info, "'custom'", str(path), "cannot load it", "NoSuchOp", "export_onnx")
    assert "onnxruntime_src" not in str(info.value)


def test_dynamic_non_batch_dim_needs_input_shapes(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
    )
    path = tmp_path / "dyn.onnx"
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    with pytest.raises(BenchError, match="input_shapes"):
        benchmark({"dyn": path}, EDGE, warmup=0, repeats=1, rounds=1)
    report = benchmark({"dyn": path}, EDGE, warmup=0, repeats=1, rounds=1,
                       input_shapes={"x": (2, 7)})
    assert report.rows[0].runs == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"repeats": 1, "rounds": 2}, "repeats >= rounds"),
        ({"warmup": -1}, "warmup"),
        ({"macs": {"nope": 1}}, "unknown variants"),
    ],
)
def test_bad_arguments_are_bench_errors(models, kwargs, match):
    paths, _ = models
    with pytest.raises(BenchError, match=match):
        benchmark(paths, EDGE, **kwargs)


def test_no_variants_is_a_bench_error():
    with pytest.raises(BenchError, match="at least one variant"):
        benchmark({}, EDGE)


# ----------------------------------------------------------------------------- runtimes and precisions


def test_runtime_and_precision_names():
    assert parse_runtimes("ort, openvino,ort") == (Runtime.ORT, Runtime.OPENVINO)
    assert parse_precisions([Precision.INT8, "fp32"]) == (Precision.INT8, Precision.FP32)
    with pytest.raises(InputError, match="unknown runtime 'onnx'; use one of ort, openvino, executorch"):
        parse_runtimes("onnx")
    with pytest.raises(InputError, match="no precision given"):
        parse_precisions(" , ")


def _calibration(n=4):
    g = torch.Generator().manual_seed(5)
    return [torch.randn(2, 3, 16, 16, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def ort_matrix(tmp_path_factory):
    d = tmp_path_factory.mktemp("matrix")
    x = torch.randn(2, 3, 16, 16)
    models = {"wide": (_tiny_cnn(16), (x,)), "narrow": (_tiny_cnn(4), (x,))}
    macs = {"wide": 1000, "narrow": 250}
    (report,) = benchmark_models(models, "ort", "fp32,int8", EDGE, calibration=_calibration(), directory=d,
                                 macs=macs, warmup=1, repeats=4, rounds=2)
    return report, d


def test_benchmark_models_times_every_model_at_every_precision_in_one_run(ort_matrix):
    report, d = ort_matrix
    assert [r.name for r in report.rows] == ["wide", "wide+int8", "narrow", "narrow+int8"]
    assert report.runtime is Runtime.ORT and report.runtime_version == ort.__version__
    rows = {r.name: r for r in report.rows}
    for name in ("wide", "narrow"):
        fp32, int8 = rows[name], rows[name + "+int8"]
        assert fp32.runs == int8.runs == 4 and fp32.macs == int8.macs
        assert is_quantized_onnx(onnx.load(int8.path)) and not is_quantized_onnx(onnx.load(fp32.path))
        assert os.path.dirname(int8.path) == str(d)


def test_plot_of_latency_against_macs(ort_matrix, tmp_path):
    report, _ = ort_matrix
    plot_latency_vs_macs([report], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert os.listdir(tmp_path) == ["plot.png"]


def test_runtime_must_be_the_enum_and_fit_the_file(models):
    paths, _ = models
    with pytest.raises(BenchError, match="runtime must be a graphprune.runtimes.Runtime"):
        benchmark(paths, EDGE, runtime="ort")
    with pytest.raises(BenchError, match=r"ExecuTorch-XNNPACK reads \.pte files"):
        benchmark(paths, EDGE, runtime=Runtime.EXECUTORCH)
    with pytest.raises(BenchError, match="ExecuTorch needs the PyTorch model"):
        benchmark_models(paths, "ort,executorch")


def test_int8_needs_calibration(tmp_path):
    with pytest.raises(CalibrationError, match="need calibration batches"):
        benchmark_models({"m": (_tiny_cnn(4), (torch.randn(1, 3, 16, 16),))}, "ort", "int8", directory=tmp_path)


@pytest.mark.edge
def test_openvino_and_executorch_fp32_and_int8(tmp_path):
    x = torch.randn(2, 3, 16, 16)
    reports = benchmark_models({"m": (_tiny_cnn(16), (x,))}, "openvino,executorch", "fp32,int8",
                               calibration=_calibration(), directory=tmp_path, macs={"m": 1000},
                               warmup=1, repeats=4, rounds=2)
    assert [r.runtime for r in reports] == [Runtime.OPENVINO, Runtime.EXECUTORCH]
    for report in reports:
        assert report.runtime_version == report.runtime.version() and report.onnxruntime_version == ""
        assert [r.name for r in report.rows] == ["m", "m+int8"]
        assert all(r.runs == 4 and r.p50_ms > 0 and r.load_ms > 0 for r in report.rows)
        assert BenchReport.from_json(json.loads(json.dumps(report.to_json()))) == report
    ov_rows = reports[0].rows
    for r in ov_rows:  # an IR's size is its .xml and its .bin
        assert r.path.endswith(".xml")
        assert r.file_bytes == os.path.getsize(r.path) + os.path.getsize(r.path[:-4] + ".bin")
    assert [r.path.endswith(".pte") for r in reports[1].rows] == [True, True]
