"""edgedf's native TernaryLinear op for ONNX Runtime (runtime/native/ort_ternary.cpp, runtime/backends/ort_native.py),
built here from the installed package's source and checked bit for bit on every CPU path against BitNet's integer
arithmetic in numpy (the cases and the reference are test_ov_native's). No torch, no OpenVINO."""

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper as oh
from onnx import numpy_helper
from test_ov_native import (
    SQRT2,
    _cases,
    _cpu_paths,
    _gelu,
    _layer,
    _mlp,
    _mlp_model,
    _model,
    _norm,
    _one_node_model,
    _python_on_path,
    _reference,
    _rms_norm,
    pack,
    path_name,
)

from edgedf.runtime.backends import native_build, ort_native
from edgedf.runtime.backends import ort as ort_backend
from edgedf.runtime.errors import EdgedfError

RUN_ONE = """
import sys, numpy as np
from edgedf.runtime.backends.ort import NativeModel, OrtSession
from edgedf.runtime.backends.native_build import cpu_path
lib, model, x, out, threads = sys.argv[1:]
m = NativeModel(open(model, 'rb').read())
m.library = lib
np.save(out, OrtSession(m, threads=int(threads)).run({'x': np.load(x)})[0])
print(cpu_path(lib))
"""


def _run_on_path(lib, isa, model: bytes, x, tmp_path, threads=2):
    """The model's output on one CPU path, in its own process (the kernel picks its path once per process)."""
    (tmp_path / "m.onnx").write_bytes(model)
    np.save(tmp_path / "x.npy", x)
    out = _python_on_path(isa, RUN_ONE, lib, "m.onnx", "x.npy", "y.npy", threads, cwd=tmp_path)
    assert out.split()[-1] == path_name(isa)
    return np.load(tmp_path / "y.npy")


def _session(model: bytes, lib, threads=2):
    m = ort_backend.NativeModel(model)
    m.library = lib
    return ort_backend.OrtSession(m, threads=threads)


@pytest.mark.parametrize("isa", _cpu_paths())
def test_ort_op_is_bit_exact_on_every_cpu_path(ort_native_lib, tmp_path, isa):
    for i, (x, codes, g, bias) in enumerate(_cases()):
        model = _one_node_model(codes, g, bias, x.shape[1]).SerializeToString()
        y, ref = _run_on_path(ort_native_lib, isa, model, x, tmp_path), _reference(x, codes, g, bias)
        assert y.shape == ref.shape
        assert np.array_equal(y, ref), f"case {i}: max |dy| {np.abs(y - ref).max()}"


def _fused(model) -> tuple[bytes, list]:
    """The model as the runtime opens a `native` bundle with edgedf's op (ort_native.fuse), and its nodes."""
    fused = ort_native.fuse(model.SerializeToString())
    return fused, list(onnx.load_from_string(fused).graph.node)


def _gelu_attr(node) -> int:
    return next((a.i for a in node.attribute if a.name == "gelu"), 0)


@pytest.mark.parametrize("isa", _cpu_paths())
def test_the_rms_norm_and_gelu_run_in_the_op_on_every_cpu_path(ort_native_lib, tmp_path, isa):
    # the RMSNorm in front: the kernel's float operations (test_ov_native's _rms_norm), then BitNet's exact codes
    for i, (x, codes, g, bias) in enumerate(_cases()[:5]):
        norm = _norm(x, i)
        model, nodes = _fused(_one_node_model(codes, g, bias, x.shape[1], norm))
        assert [n.op_type for n in nodes] == ["TernaryLinear"] and len(nodes[0].input) == 6
        y = _run_on_path(ort_native_lib, isa, model, x, tmp_path)
        assert np.array_equal(y, _reference(_rms_norm(x, *norm[:2]), codes, g, bias)), f"norm, case {i}"
    # the GELU after fc1: the same bits on every path, within 1e-6 of GELU with float64 erf
    for i, (x, codes, g, bias) in enumerate(_cases()[:5]):
        x = x * np.float32(3) / np.abs(x).max(1, keepdims=True)  # outputs spread over GELU's curved part
        model, nodes = _fused(_one_node_model(codes, g, bias, x.shape[1], gelu=(SQRT2, 0.5)))
        assert [(n.op_type, _gelu_attr(n)) for n in nodes] == [("TernaryLinear", 1)]
        y = _run_on_path(ort_native_lib, isa, model, x, tmp_path)
        t = _reference(x, codes, g, bias)
        assert np.abs(y - _gelu(t)).max() <= 1e-6 * max(1.0, np.abs(t).max()), f"gelu, case {i}"
        if isa != "scalar":
            assert np.array_equal(y, _run_on_path(ort_native_lib, "scalar", model, x, tmp_path)), f"gelu, case {i}"


@pytest.mark.parametrize("isa", _cpu_paths())
def test_a_vit_mlp_with_its_residual_is_two_ops_on_every_cpu_path(ort_native_lib, tmp_path, isa):
    # norm -> fc1 -> GELU -> norm -> fc2 -> + x: fc1 with its norm and GELU, fc2 with its norm and the residual; the
    # same bits as each layer run alone (checked above), plus x in float32
    for i, (m, k, hidden) in enumerate(((13, 44, 96), (197, 96, 384))):
        x, layers = _mlp(i, m, k, hidden)
        (c1, g1, b1, n1), (c2, g2, b2, n2) = layers
        model, nodes = _fused(_mlp_model(layers, k, residual="x"))
        assert [(n.op_type, len(n.input), _gelu_attr(n)) for n in nodes] == [
            ("TernaryLinear", 6, 1),
            ("TernaryLinear", 7, 0),
        ]
        y = _run_on_path(ort_native_lib, isa, model, x, tmp_path)
        h = _run_on_path(ort_native_lib, isa, _fused(_one_node_model(c1, g1, b1, k, n1, (SQRT2, 0.5)))[0], x, tmp_path)
        fc2 = _fused(_one_node_model(c2, g2, b2, hidden, n2))[0]
        assert np.array_equal(y, _run_on_path(ort_native_lib, isa, fc2, h, tmp_path) + x), f"case {i}"


@pytest.mark.parametrize(
    "norm, gelu, residual",
    [((4.0, -1), None, None), ((2.0, 0), None, None), (None, (2.0, 0.5), None), (None, (SQRT2, 0.25), None),
     (None, None, ("r", [96])), (None, None, ("r", [1, 96]))],
    ids=["norm-not-a-square", "norm-other-axis", "gelu-divisor-2", "gelu-half-0.25", "add-vector", "add-one-row"],
)  # fmt: skip
def test_only_the_norm_gelu_and_residual_themselves_are_fused(ort_native_lib, norm, gelu, residual):
    # look-alikes (another exponent or axis, another GELU constant, an Add that broadcasts) stay in stock ops, and
    # the model gives what it gives without the fusion
    x, codes, g, bias = _cases()[1]
    x, codes, bias = x[:, :96], codes[:96, :96], bias[:96]
    if norm:
        norm = (*_norm(x, 0)[:2], *norm)
    nodes, inits = _layer("", "x", "t" if residual else "y", codes, g, bias, norm, gelu)
    inputs = ()
    if residual:
        nodes.append(oh.make_node("Add", [residual[0], "t"], ["y"]))
        inputs = (residual,)
    model = _model(nodes, inits, 96, 96, inputs)
    fused, fused_nodes = _fused(model)
    assert [len(n.input) for n in fused_nodes if n.op_type == "TernaryLinear"] == [4]
    assert len(fused_nodes) == len(model.graph.node) and not any(_gelu_attr(n) for n in fused_nodes)
    feeds = {"x": x}
    if residual:
        feeds["r"] = np.random.default_rng(3).standard_normal(residual[1]).astype(np.float32)
    y = _session(fused, ort_native_lib).run(feeds)[0]
    assert np.array_equal(y, _session(model.SerializeToString(), ort_native_lib).run(feeds)[0])


def test_the_fused_inputs_are_checked_when_the_op_runs(ort_native_lib):
    # a residual that is not of the output's shape, a norm weight that is not K long: one-line errors, not a crash
    x, codes, g, bias = _cases()[1]
    k, n = x.shape[1], len(bias)
    node = oh.make_node("TernaryLinear", ["x", "w", "g", "b", "gamma", "eps", "r"], ["y"], domain="edgedf")
    for gamma_len, r_shape, words in ((k, [1, n], "the residual's shape is not the output's"),
                                      (k - 1, ["m", n], "the norm takes K weights and one eps")):  # fmt: skip
        inits = [numpy_helper.from_array(a, name) for a, name in (
            (pack(codes), "w"), (np.asarray(g, np.float32), "g"), (bias, "b"),
            (np.ones(gamma_len, np.float32), "gamma"), (np.float32(1e-6), "eps"))]  # fmt: skip
        model = _model([node], inits, k, n, (("r", r_shape),)).SerializeToString()
        r = np.zeros([len(x) if d == "m" else d for d in r_shape], np.float32)
        with pytest.raises(Exception, match=words):
            _session(model, ort_native_lib).run({"x": x, "r": r})


def test_without_onnx_the_graph_runs_as_it_is(monkeypatch, capsys):
    # a device without the onnx package: the op without the norm, GELU and residual fused in, and one line saying so
    import builtins

    real = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    x, codes, g, bias = _cases()[1]
    model = _one_node_model(codes, g, bias, x.shape[1], _norm(x, 0)).SerializeToString()
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    monkeypatch.setattr(ort_native, "_noted", set())
    assert ort_native.fuse(model) == model
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "onnx is not installed" in err


def test_threads_and_batch_shapes_do_not_change_a_bit(ort_native_lib):
    x, codes, g, bias = _cases()[7]  # 197 rows: several blocks per thread
    model = _one_node_model(codes, g, bias, x.shape[1]).SerializeToString()
    one, two = (_session(model, ort_native_lib, t).run({"x": x})[0] for t in (1, 2))
    assert np.array_equal(one, two) and np.array_equal(one, _reference(x, codes, g, bias))
    # [B, T, K] in, [B, T, N] out: the op works on the last axis whatever comes before it
    m3 = _one_node_model(codes, g, bias, x.shape[1])
    for v in (*m3.graph.input, *m3.graph.output):
        dims = v.type.tensor_type.shape.dim
        last = dims[-1].dim_value
        del dims[:]
        for d in ("b", "t"):
            dims.add().dim_param = d
        dims.add().dim_value = last
    y3 = _session(m3.SerializeToString(), ort_native_lib).run({"x": x[:196].reshape(4, 49, -1)})[0]
    assert y3.shape == (4, 49, len(bias)) and np.array_equal(y3.reshape(196, -1), one[:196])


def test_invalid_packed_weights_are_refused(ort_native_lib):
    x, codes, g, bias = _cases()[0]
    model = _one_node_model(codes, g, bias, x.shape[1])
    w = next(i for i in model.graph.initializer if i.name == "w")
    arr = numpy_helper.to_array(w).copy()
    arr[0, 0] = 0xFF
    w.CopyFrom(numpy_helper.from_array(arr, "w"))
    with pytest.raises(Exception, match="unused 2-bit value 3"):
        _session(model.SerializeToString(), ort_native_lib).run({"x": x})


def test_a_model_without_the_op_library_names_the_op(ort_native_lib):
    # what a device sees if the library were not registered: ONNX Runtime's own one-line error, not a crash
    x, codes, g, bias = _cases()[0]
    model = _one_node_model(codes, g, bias, x.shape[1]).SerializeToString()
    with pytest.raises(EdgedfError, match="TernaryLinear"):
        ort_backend.OrtSession(model)


def test_build_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEDF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native_build, "compiler", lambda: None)
    with pytest.raises(EdgedfError, match=r"no C\+\+ compiler"):
        ort_native.build()
    assert not list(tmp_path.rglob("*.so*"))  # nothing half-written
    monkeypatch.setattr(native_build, "compiler", lambda: "g++")
    (tmp_path / "broken.cpp").write_text("this is not C++\n")
    with pytest.raises(EdgedfError, match="building the native ternary kernel for ONNX Runtime failed") as e:
        ort_native.build(source=tmp_path / "broken.cpp")
    assert "\n" not in str(e.value)
    assert not list(tmp_path.rglob("*.so*"))


def test_a_kernel_version_with_its_own_core_is_its_own_build(tmp_path):
    # ab_native.py times a kernel version kept with its own ternary_core.hpp beside it (#include "..." finds that one
    # first): the build cache must key on the core the source includes, or the "old" kernel is the new one's library
    src = tmp_path / "ort_ternary.cpp"
    src.write_text(ort_native.SOURCE.read_text())
    assert ort_native.library_path(src) == ort_native.library_path()  # no core beside it: the shipped one
    (tmp_path / "ternary_core.hpp").write_text(native_build.CORE.read_text() + "// another version\n")
    assert ort_native.library_path(src) != ort_native.library_path()


def test_where_the_op_would_not_run_or_pay_is_one_line(ort_native_lib, monkeypatch):
    ort_native.library.cache_clear()
    monkeypatch.delenv("EDGEDF_TERNARY_ISA", raising=False)
    monkeypatch.setattr(ort_native, "cpu_path", lambda lib: "scalar")  # a CPU without AVX2: MLAS's int8 is faster
    with pytest.raises(EdgedfError, match="needs AVX2"):
        ort_native.library()
    monkeypatch.undo()
    ort_native.library.cache_clear()
    monkeypatch.setenv("EDGEDF_NATIVE", "0")
    with pytest.raises(EdgedfError, match="switched off"):
        ort_native.library()
    monkeypatch.setenv("EDGEDF_NATIVE", "1")
    monkeypatch.setattr(ort_native, "_ort_version", lambda: (1, 20))
    with pytest.raises(EdgedfError, match="ONNX Runtime 1.21 or later"):
        ort_native.library()
    monkeypatch.setattr(ort_native.platform, "machine", lambda: "aarch64")  # a Pi: ONNX Runtime's own int8 kernels
    with pytest.raises(EdgedfError, match="for x86-64 CPUs .this is aarch64"):
        ort_native.library()
    ort_native.library.cache_clear()


def test_module_cli_builds_and_names_the_path(ort_native_lib, tmp_path):
    cmd = [sys.executable, "-m", "edgedf.runtime.backends.ort_native"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == str(ort_native_lib)
    assert proc.stdout.splitlines()[1].split(": ")[1] in ("amx-int8", "avx512-vnni", "avx-vnni", "avx2", "scalar")
