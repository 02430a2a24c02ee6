"""The TensorRT backend up to the engine build: TensorRT cannot be installed here (its wheels download at
install time), so what runs is everything TensorRT is given (flags per version, the fp16 model TensorRT 11
needs, trtexec lines, engine cache keys, batch chunking); the builder calls follow NVIDIA's documentation."""

import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_lowering import TENSORRT_OPS

from edgedf.runtime.backends import tensorrt as trt_backend
from edgedf.runtime.bundle import load_bundle
from edgedf.runtime.ternary import main as ternary_main

TINY = Path(__file__).parents[1] / "assets" / "tiny_bundle"


@pytest.mark.parametrize(
    "precision, v10",
    [("fp32", []), ("fp16", ["FP16"]), ("int8-ptq", ["FP16", "INT8"]), ("ternary", ["FP16", "INT8"])],
)
def test_builder_flags_per_version(precision, v10):
    assert trt_backend.precision_flags(precision, "10.3.0") == v10
    # TensorRT 11 removed BuilderFlag.FP16/INT8: strongly typed networks only, no flags for any precision
    assert trt_backend.precision_flags(precision, "11.4.1") == []
    assert trt_backend.strongly_typed("11.0.0") and not trt_backend.strongly_typed("10.13.2")


def test_trtexec_lines():
    v10 = trt_backend.trtexec_command("m.onnx", "ternary", "m.engine", "10", "input", (3, 128, 128))
    assert "--fp16" in v10 and "--int8" in v10
    assert "--minShapes=input:1x3x128x128" in v10 and "--optShapes=input:8x3x128x128" in v10
    assert f"--maxShapes=input:{trt_backend.MAX_BATCH}x3x128x128" in v10
    v11 = trt_backend.trtexec_command("m.onnx", "ternary", "m.engine", "11", "input", (3, 128, 128))
    assert "--fp16" not in v11 and "--int8" not in v11 and "--maxShapes" in v11
    fixed = trt_backend.trtexec_command("m.onnx", "fp16", "m.engine", "10")
    assert "Shapes" not in fixed and "--fp16" in fixed


def test_fp16_model_for_tensorrt_11_runs_and_matches(tmp_path):
    bundle = load_bundle(TINY)
    src = bundle.entry.read_bytes()
    half = trt_backend.to_fp16(src)
    model = onnx.load_from_string(half)
    onnx.checker.check_model(model, full_check=True)  # also: nodes in topological order, as parsers read them
    assert {n.op_type for n in model.graph.node} <= TENSORRT_OPS
    io = [*model.graph.input, *model.graph.output]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in io)  # fp32 in and out
    matmul_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert matmul_weights, "weights should be fp16"
    s = bundle.spec.input_size
    x = np.random.default_rng(0).standard_normal((4, 3, s, s)).astype(np.float32)
    ref = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    out = ort.InferenceSession(half, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(out - ref).max() < 2e-3 * max(1.0, np.abs(ref).max())
    # the by-hand path the export prints for TensorRT 11
    assert ternary_main([str(TINY), str(tmp_path / "m.onnx"), "--fp16"]) == 0
    assert onnx.load(str(tmp_path / "m.onnx")).graph.initializer[0].data_type == onnx.TensorProto.FLOAT16


def test_engine_cache_key_names_gpu_and_version():
    k = trt_backend.engine_key(b"model", "fp16", "10.3.0", "Orin sm87")
    assert k != trt_backend.engine_key(b"model", "fp16", "10.3.0", "NVIDIA H200 sm90")
    assert k != trt_backend.engine_key(b"model", "fp16", "11.0.0", "Orin sm87")
    assert k != trt_backend.engine_key(b"model", "int8-ptq", "10.3.0", "Orin sm87")
    assert k == trt_backend.engine_key(b"model", "fp16", "10.3.0", "Orin sm87")


def test_available_needs_tensorrt_not_only_cuda_python(monkeypatch):
    if trt_backend.available():
        pytest.skip("TensorRT is installed here")
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = types.ModuleType("cuda.bindings.runtime")
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", bindings.runtime)
    assert trt_backend._cudart() is bindings.runtime  # cuda-python alone imports ...
    assert not trt_backend.available()  # ... but cannot run an engine without TensorRT


def test_feeds_larger_than_the_profile_run_in_chunks():
    seen = []

    class Session(trt_backend.TensorRTSession):
        def __init__(self):  # no GPU here: _run stands in for the engine, recording the batch it was given
            pass

        def _run(self, feeds):
            seen.append(len(feeds["input"]))
            return [feeds["input"][:, :2, 0, 0] * 2]

    x = np.random.default_rng(0).standard_normal((trt_backend.MAX_BATCH * 2 + 5, 3, 4, 4)).astype(np.float32)
    (y,) = Session().run({"input": x})
    assert seen == [trt_backend.MAX_BATCH, trt_backend.MAX_BATCH, 5]
    np.testing.assert_array_equal(y, x[:, :2, 0, 0] * 2)
