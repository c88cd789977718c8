"""The timing child (run as ``python -c <this file's text>``, never imported by graphprune).

It imports only its runtime and numpy, reads a JSON spec on stdin and writes one JSON object on
stdout: {"ok": ...} or {"error": ..., "variant": ...}. Runtimes: "ort" (.onnx), "openvino" (.xml
or .onnx, CPU plugin, f32 inference precision) and "executorch" (.pte, XNNPACK threadpool resized
to the thread count).
"""
import gc
import json
import os
import re
import sys
import time

spec = json.loads(sys.stdin.read())
if spec["core"] is not None:
    os.sched_setaffinity(0, {spec["core"]})


def status_kb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_bytes():
    kb = status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


import numpy as np  # noqa: E402

RUNTIME = spec["runtime"]
if RUNTIME == "ort":
    import onnxruntime as ort
    VERSION = ort.__version__
elif RUNTIME == "openvino":
    import openvino as ov
    VERSION = ov.__version__.split("-")[0]
else:
    import importlib.metadata

    import executorch.kernels.quantized  # noqa: F401  (the kernels of quantized ops left outside XNNPACK)
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime as ETRuntime
    portable_lib._unsafe_reset_threadpool(spec["threads"])
    VERSION = importlib.metadata.version("executorch")

DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
          "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
          "tensor(int16)": np.int16, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
          "tensor(bool)": np.bool_}


def fail(name, message):
    print(json.dumps({"error": message, "variant": name}))
    sys.exit(0)


def reason(exc):
    """The runtime's message without error-code prefixes, file paths and C++ source locations."""
    msg = " ".join(str(exc).split())
    msg = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", msg)
    msg = re.sub(r"Load model from .*? failed: ?", "", msg)
    msg = re.sub(r"/onnxruntime_src/\S+:\d+ .*?\) (?=[A-Z\[])", "", msg)
    return msg[:400]


def make_array(name, input_name, shape, dtype, rng):
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def concrete(name, input_name, dims):
    given = spec["input_shapes"].get(input_name)
    if given is not None:
        return list(given)
    shape = []
    for d, dim in enumerate(dims):
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
        elif d == 0:
            shape.append(1)
        else:
            fail(name, f"input {input_name!r} has dynamic dim {d} ({dim!r}) in shape "
                       f"{dims}; pass input_shapes={{{input_name!r}: (...)}}")
    return shape


# Each loader returns a function that runs the model once on fixed random inputs.

def load_ort(name, path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = spec["threads"]
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, spec["level"])
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        fail(name, f"ONNX Runtime {VERSION} cannot load it: {reason(exc)}; re-export it "
                   "with graphprune.export.export_onnx (which checks it in ONNX Runtime) or use "
                   "an onnxruntime that supports its ops and IR version")
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = concrete(name, i.name, i.shape)
        if i.type not in DTYPES:
            fail(name, f"input {i.name!r} has type {i.type}, which the harness cannot generate")
        feeds[i.name] = make_array(name, i.name, shape, DTYPES[i.type], rng)
    return lambda: sess.run(None, feeds), {k: list(v.shape) for k, v in feeds.items()}


def load_openvino(name, path):
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": spec["threads"],
              "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    try:
        compiled = ov.Core().compile_model(path, "CPU", config)
    except Exception as exc:
        fail(name, f"OpenVINO {VERSION} cannot compile it on the CPU plugin: {reason(exc)}")
    rng = np.random.default_rng(0)
    arrays = []
    for port in compiled.inputs:
        pshape = port.get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in pshape]
        input_name = port.get_any_name() if port.get_names() else f"input_{len(arrays)}"
        dtype = np.dtype(port.get_element_type().to_dtype())
        arrays.append(make_array(name, input_name, concrete(name, input_name, dims), dtype, rng))
    request = compiled.create_infer_request()
    return lambda: request.infer(arrays), {f"input_{k}": list(a.shape) for k, a in enumerate(arrays)}


ET_DTYPES = {6: np.float32, 7: np.float64, 4: np.int64, 3: np.int32, 1: np.int8, 0: np.uint8, 11: np.bool_}


def load_executorch(name, path):
    import torch
    try:
        method = ETRuntime.get().load_program(path).load_method("forward")
    except Exception as exc:
        fail(name, f"ExecuTorch {VERSION} cannot load it: {reason(exc)}; write it with "
                   "graphprune.runtimes.export_executorch")
    meta = method.metadata
    rng = np.random.default_rng(0)
    tensors = []
    for k in range(meta.num_inputs()):
        t = meta.input_tensor_meta(k)
        dtype = ET_DTYPES.get(int(t.dtype()))
        if dtype is None:
            fail(name, f"input {k} has ExecuTorch scalar type {t.dtype()}, which the harness cannot generate")
        tensors.append(torch.from_numpy(make_array(name, f"input_{k}", list(t.sizes()), dtype, rng)))
    return lambda: method.execute(tensors), {f"input_{k}": list(t.shape) for k, t in enumerate(tensors)}


LOADERS = {"ort": load_ort, "openvino": load_openvino, "executorch": load_executorch}


def load(name, path):
    """Load and run once (catches run errors with warmup=0)."""
    fn, shapes = LOADERS[RUNTIME](name, path)
    try:
        fn()
    except Exception as exc:
        fail(name, f"{RUNTIME} cannot run it on random inputs of shapes {shapes}: "
                   f"{reason(exc)}; pass input_shapes={{name: shape}} with valid shapes")
    return fn


variants = spec["variants"]
if spec["mode"] == "memory":
    (name, path), = variants.items()
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter to the current RSS
        base = status_kb("VmRSS") * 1024
    except (OSError, TypeError):
        base = peak_bytes()
    t0 = time.perf_counter_ns()
    fn = LOADERS[RUNTIME](name, path)[0]
    load_ns = time.perf_counter_ns() - t0
    for _ in range(3):
        fn()
    print(json.dumps({"ok": {"peak_mem_bytes": peak_bytes() - base, "load_ns": load_ns}}))
    sys.exit(0)

names = list(variants)
runners = {n: load(n, variants[n]) for n in names}
for n in names:
    for _ in range(spec["warmup"]):
        runners[n]()
lat = {n: [] for n in names}
per_round = spec["per_round"]
gc.collect()
gc.disable()
for r in range(spec["rounds"]):
    k = r % len(names)
    for n in names[k:] + names[:k]:
        fn = runners[n]
        for _ in range(per_round):
            t0 = time.perf_counter_ns()
            fn()
            lat[n].append(time.perf_counter_ns() - t0)
gc.enable()
print(json.dumps({"ok": {"latency_ns": lat, "version": VERSION}}))
