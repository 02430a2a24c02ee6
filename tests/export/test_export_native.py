"""Export side of edgedf's native OpenVINO kernel (`--lowering native`); the kernel's own bit-exactness on every
CPU path is tests/runtime/test_ov_native.py, whose numpy codes are checked against PyTorch's here."""

import json

import numpy as np
import onnx
import onnxruntime
import openvino
import pytest
import torch

from edgedf.export import api as export_api
from edgedf.export.api import ExportOptions, export_bundle
from edgedf.runtime.backends import BackendOptions, open_classifier, open_session, ort_native, ov_native
from edgedf.runtime.backends import openvino as ov_backend
from edgedf.runtime.backends import ort as ort_backend
from edgedf.runtime.bundle import load_bundle
from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.ternary import EPS, expand_ternary_linear
from edgedf.train.bitlinear import EPS as TRAIN_EPS
from edgedf.train.bitlinear import activation_quant_int8


def test_the_runtime_tests_codes_are_pytorchs():
    """tests/runtime computes the reference codes in numpy: the same as PyTorch's, .5 boundaries included."""
    assert EPS == TRAIN_EPS
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 384)).astype(np.float32) * rng.uniform(0.01, 30, (64, 1)).astype(np.float32)
    x[:, 1] = np.abs(x).max(1) * (np.arange(64) + 0.5) / 127
    s = np.float32(127.0) / np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(EPS))
    q, s_pt = activation_quant_int8(torch.from_numpy(x))
    assert np.array_equal(np.rint(x * s), q.numpy().astype(np.float32)) and np.array_equal(s, s_pt.numpy())


def test_export_native_bundle_runs_the_canonical_graph(checkpoints, tmp_path, native_kernel):
    path, m = export_bundle(checkpoints["bit"], ExportOptions(target="cpu", out=tmp_path / "n", lowering="native"))
    assert m["entry"] == "model.onnx" and m["lowering"] == "native"
    assert m["calibration"]["needed"] is False and not m["deviations"]
    graph = onnx.load(str(path / "model.onnx")).graph
    assert sum(n.op_type == "TernaryLinear" for n in graph.node) == 4 * 2
    r = m["parity"]["backends"]["openvino"]
    # exact codes per layer (above); across layers, float sums in another order can move a .5-boundary code
    assert r["decisive_agreement"] >= 0.995 and r["max_abs_dp"] < 0.05
    assert any("native ternary kernel built here" in n for n in m["notes"])
    # as OpenVINO reads it with the kernel, per block: qkv, writing the attention's scaled q and k^T; proj with the
    # residual added in; fc1 -> GELU -> fc2 as one op, residual in; every RMSNorm inside its op
    core = openvino.Core()
    core.add_extension(str(ov_native.extension()))
    ops = core.read_model(str(path / "model.onnx")).get_ops()
    fused = [op for op in ops if op.get_type_name() == "TernaryLinear"]
    keys = ("gelu", "chain", "residual", "heads", "k_transposed")
    attrs = sorted(tuple(op.get_attributes()[a] for a in keys) for op in fused)
    qkv, proj, mlp = (False, False, False, 2, True), (False, False, True, 0, False), (True, True, True, 0, False)
    assert attrs == [qkv] * 2 + [proj] * 2 + [mlp] * 2
    assert sorted(len(op.inputs()) for op in fused) == [6, 6, 7, 7, 12, 12]
    five_d = [op for op in ops if op.get_type_name() == "Transpose" and len(op.get_output_partial_shape(0)) == 5]
    assert not five_d  # q, k, v straight from the qkv op
    assert not [op for op in ops if op.get_type_name() == "Multiply" and len(op.get_output_partial_shape(0)) == 4]
    bundle = load_bundle(path)
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    native = open_classifier(bundle, options=BackendOptions(threads=2)).infer(x)
    # without the kernel (no compiler on the device): the same arithmetic in stock ops
    stock = open_session(expand_ternary_linear((path / "model.onnx").read_bytes()), "openvino").run({"input": x})[0]
    assert np.allclose(stock, native, atol=1e-4)


def test_native_bundle_without_the_kernel_still_runs(checkpoints, tmp_path, native_kernel, monkeypatch, capsys):
    path, _ = export_bundle(
        checkpoints["bit"], ExportOptions(target="cpu", out=tmp_path / "n", lowering="native", verify=False)
    )

    def no_kernel():
        raise EdgedfError("no C++ compiler found to build the native ternary kernel (install g++, or set CXX)")

    monkeypatch.setattr(ov_native, "extension", no_kernel)
    model = ov_backend.model_for_bundle(load_bundle(path))
    assert not hasattr(model, "extension") and b"TernaryLinear" not in bytes(model)
    assert "no C++ compiler" in capsys.readouterr().err


def test_ort_native_bundle_runs_edgedfs_op_in_onnx_runtime(checkpoints, tmp_path, ort_native_lib, monkeypatch, capsys):
    path, m = export_bundle(checkpoints["bit"], ExportOptions(target="ort", out=tmp_path / "n", lowering="native"))
    assert m["entry"] == "model.onnx" and m["lowering"] == "native" and m["backend"] == "ort"
    assert m["calibration"]["needed"] is False and not m["deviations"]
    assert any("native ternary kernel built here" in n for n in m["notes"])
    r = m["parity"]["backends"]["ort"]  # verified as the device runs it: with the op library, and without it
    assert r["decisive_agreement"] >= 0.995 and r["max_abs_dp"] < 0.05
    assert r["without_op"]["decisive_agreement"] >= 0.995 and r["without_op"]["max_abs_dp"] < 0.05
    bundle = load_bundle(path)
    model = ort_backend.model_for_bundle(bundle)
    assert model.library == ort_native_lib
    # each op with its norm (and fc1's GELU, proj's and fc2's residual add) fused in: no norm, GELU or add nodes left
    nodes = onnx.load_from_string(bytes(model)).graph.node
    ops = [n for n in nodes if n.op_type == "TernaryLinear"]
    fused = [(len(n.input), [a.i for a in n.attribute if a.name == "gelu"]) for n in ops]
    assert fused == [(6, []), (7, []), (6, [1]), (7, [])] * 2, fused
    ops = [n.op_type for n in nodes]
    assert not {"Pow", "Sqrt", "Erf"} & set(ops) and ops.count("Add") == 1, ops  # the position embedding's
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    native = open_classifier(bundle, options=BackendOptions(threads=2)).infer(x)

    # where the op cannot be built: ONNX Runtime runs the ONNX functions the canonical file carries, one line says why
    def no_kernel():
        raise EdgedfError("no C++ compiler found to build the native ternary kernel for ONNX Runtime")

    monkeypatch.setattr(ort_native, "library", no_kernel)
    assert ort_backend.model_for_bundle(bundle) == bundle.entry
    assert "no C++ compiler found" in capsys.readouterr().err
    stock = open_classifier(bundle, options=BackendOptions(threads=2)).infer(x)
    assert np.allclose(stock, native, atol=1e-4)
    # ... at int8 speed: the functions' MatMulInteger -> Cast -> Mul fuse into MatMulIntegerToFloat, as in int8-exact
    so = onnxruntime.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    onnxruntime.InferenceSession(str(bundle.entry), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]
    layers = sum(n.op_type == "TernaryLinear" for n in onnx.load(str(bundle.entry)).graph.node)
    assert ops.count("MatMulIntegerToFloat") == layers and "MatMulInteger" not in ops and "Round" not in ops


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["avx2"], "native"),
        (["avx2", "avx_vnni"], "native"),
        (["avx2", "avx512f", "avx512_vnni"], "native"),
        (["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"], "native"),
        ([], "int8-qdq"),
    ],
)
def test_cpu_target_takes_the_native_kernel_on_avx2(checkpoints, native_kernel, monkeypatch, flags, expected):
    from edgedf.devices import bench
    from edgedf.devices.profiles import get_profile
    from edgedf.runtime.backends import ov_native

    monkeypatch.setattr(bench, "cpu_info", lambda: ("test cpu", flags))
    notes: list[str] = []
    assert export_api._ternary_lowering(get_profile("cpu"), None, notes) == expected
    assert ("takes the native ternary kernel" in " ".join(notes)) == (expected == "native")
    assert export_api._ternary_lowering(get_profile("cpu"), "int8-qdq", []) == "int8-qdq"  # asked for: kept
    with pytest.raises(EdgedfError, match="OpenVINO and ONNX Runtime only"):
        export_api._ternary_lowering(get_profile("jetson"), "native", [])

    def no_kernel():
        raise EdgedfError("no C++ compiler found to build the native ternary kernel")

    monkeypatch.setattr(ov_native, "extension", no_kernel)  # the kernel cannot be built: the portable Q/DQ
    notes = []
    assert export_api._ternary_lowering(get_profile("cpu"), None, notes) == "int8-qdq"
    assert any("no C++ compiler" in note and "takes int8-qdq" in note for note in notes) == bool(flags)


def test_native_bundle_keeps_the_reference_functions(checkpoints, tmp_path, native_kernel):
    # the canonical file keeps its FunctionProtos: ONNX Runtime can still run it as the reference
    path, _ = export_bundle(
        checkpoints["bit"], ExportOptions(target="cpu", out=tmp_path / "n", lowering="native", verify=False)
    )
    model = onnx.load(str(path / "model.onnx"))
    assert {f.name for f in model.functions} >= {"TernaryLinear", "UnpackTernary"}
    assert json.loads((path / "manifest.json").read_text())["lowering"] == "native"
