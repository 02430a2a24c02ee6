"""edgedf's native TernaryLinear op for ONNX Runtime (runtime/native/ort_ternary.cpp, runtime/backends/ort_native.py),
built here from the installed package's source and checked bit for bit on every CPU path against BitNet's integer
arithmetic in numpy (the cases and the reference are test_ov_native's). No torch, no OpenVINO."""

import os
import subprocess
import sys

import numpy as np
import pytest
from onnx import numpy_helper
from test_ov_native import _cases, _cpu_paths, _one_node_model, _reference

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
    proc = subprocess.run(
        [sys.executable, "-c", RUN_ONE, str(lib), "m.onnx", "x.npy", "y.npy", str(threads)],
        capture_output=True,
        text=True,
        env={**os.environ, "EDGEDF_TERNARY_ISA": isa},
        cwd=tmp_path,  # not the checkout, whose edgedf/ would shadow an installed wheel
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == {"avx512": "avx512-vnni", "amx": "amx-int8", "avxvnni": "avx-vnni"}.get(isa, isa)
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
