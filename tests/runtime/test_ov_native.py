"""edgedf's native TernaryLinear kernel for OpenVINO (runtime/native/ternary_linear.cpp, runtime/backends/ov_native.py),
built here with the C++ compiler against the installed OpenVINO from the installed package's source (in CI: the
wheel's), and checked bit for bit on every CPU path against BitNet's integer arithmetic in numpy. No torch."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from edgedf.devices.bench import cpu_info
from edgedf.runtime.backends import native_build, ov_native
from edgedf.runtime.backends import openvino as ov_backend
from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.ternary import EPS, expand_ternary_linear


def pack(codes: np.ndarray) -> np.ndarray:
    """codes [N, K] in {-1, 0, 1} (K a multiple of 4) -> uint8 [N, K/4], as train.bitlinear.pack_ternary."""
    u = (codes + 1).astype(np.uint8).reshape(codes.shape[0], -1, 4)
    return (u[..., 0] | u[..., 1] << 2 | u[..., 2] << 4 | u[..., 3] << 6).astype(np.uint8)


def int8_codes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BitNet's per-token codes in float32, as PyTorch computes them: s = 127 / max(absmax, eps) (one correctly
    rounded division), Round(x * s) half to even (tests/export checks these equal PyTorch's codes)."""
    s = np.float32(127.0) / np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(EPS))
    return np.rint(x * s).astype(np.int64), s


def _cases():
    """(x [M, K], codes [N, K], g, bias [N]): tails in M (every count of 1 to 5 rows left below a whole tile;
    M = 197, batch 1 of a ViT at 224 px, splits into several blocks per thread), K and N (1 to 4 column blocks left
    over), codes on .5 boundaries, and the worst case for int16 pair sums (every activation code 127 against every
    weight +1, K = 1024: 4 widening rounds)."""
    rng = np.random.default_rng(0)
    out = []
    shapes = (
        (13, 44, 40),
        (50, 384, 96),
        (7, 1540, 33),
        (70, 192, 80),
        (33, 64, 24),
        (65, 128, 48),
        (99, 96, 16),
        (197, 96, 40),
    )
    for m, k, n in shapes:  # K % 4 == 0: the canonical packing
        x = rng.standard_normal((m, k)).astype(np.float32) * rng.uniform(0.01, 30, (m, 1)).astype(np.float32)
        x[:, 1] = np.abs(x).max(1) * (np.arange(m) + 0.5) / 127  # x * s lands on .5 (up to rounding)
        codes = rng.integers(-1, 2, (n, k))
        out.append((x, codes, np.float32(rng.uniform(0.01, 0.1)), rng.standard_normal(n).astype(np.float32)))
    k = 1024
    for sign in (1, -1):
        x = np.full((6, k), sign * 0.7, np.float32)
        out.append((x, np.full((20, k), sign), np.float32(0.05), np.zeros(20, np.float32)))
    return out


def _reference(x, codes, g, bias):
    """BitNet's integer arithmetic: exact int64 sums of the codes, then float32 acc * (g / s) + bias."""
    q, s = int8_codes(x)
    acc = q @ codes.T.astype(np.int64)
    return acc.astype(np.float32) * (np.float32(g) / s) + bias


def _rms_norm(x, gamma, eps, parts=32):
    """The kernel's fused RMSNorm in float32, operation for operation: squares summed in 32 running partial sums
    (column j into sum j % 32 up to the last whole 32), the sums added pairwise (sum j + w into sum j, w = 16, 8,
    4, 2, 1), then the remaining columns in order; x * (1 / sqrt(mean + eps)) * gamma."""
    k = x.shape[1]
    whole = k // parts * parts
    part = np.zeros((x.shape[0], parts), np.float32)
    for i in range(0, whole, parts):
        part += x[:, i : i + parts] * x[:, i : i + parts]
    w = parts // 2
    while w:
        part[:, :w] += part[:, w : 2 * w]
        w //= 2
    ss = part[:, 0].copy()
    for i in range(whole, k):
        ss += x[:, i] * x[:, i]
    inv = np.float32(1) / np.sqrt(ss / np.float32(k) + np.float32(eps))
    return x * inv[:, None] * gamma


def _layer(prefix, x, y, codes, g, bias, norm=None, gelu=None):
    """(nodes, initializers) of TernaryLinear(x) -> y; with norm=(gamma, eps, exponent, axis) the RMSNorm in front of
    it as the canonical export writes it: Mul(Div(x, Sqrt(Add(ReduceMean(Pow(x, 2), [-1]), eps))), gamma); with
    gelu=(divisor, half) the GELU after it as PyTorch exports nn.GELU() (divisor sqrt 2, half 0.5):
    Mul(t, Mul(half, Add(Erf(Div(t, divisor)), 1))). Names start with prefix."""
    p = prefix
    inputs = [p + "xn" if norm else x, p + "w", p + "g", p + "b"]
    nodes = [oh.make_node("TernaryLinear", inputs, [p + "t" if gelu else y], domain="edgedf")]
    inits = [
        numpy_helper.from_array(pack(codes), p + "w"),
        numpy_helper.from_array(np.asarray(g, np.float32), p + "g"),
        numpy_helper.from_array(bias, p + "b"),
    ]
    if norm:
        gamma, eps, exponent, axis = norm
        nodes[:0] = [
            oh.make_node("Pow", [x, p + "two"], [p + "sq"]),
            oh.make_node("ReduceMean", [p + "sq", p + "axes"], [p + "ms"], keepdims=1),
            oh.make_node("Add", [p + "ms", p + "eps"], [p + "mse"]),
            oh.make_node("Sqrt", [p + "mse"], [p + "rms"]),
            oh.make_node("Div", [x, p + "rms"], [p + "xd"]),
            oh.make_node("Mul", [p + "xd", p + "gamma"], [p + "xn"]),
        ]
        inits += [
            numpy_helper.from_array(np.float32(exponent), p + "two"),
            numpy_helper.from_array(np.array([axis], np.int64), p + "axes"),
            numpy_helper.from_array(np.float32(eps), p + "eps"),
            numpy_helper.from_array(gamma, p + "gamma"),
        ]
    if gelu:
        nodes += [
            oh.make_node("Div", [p + "t", p + "divisor"], [p + "td"]),
            oh.make_node("Erf", [p + "td"], [p + "e"]),
            oh.make_node("Add", [p + "e", p + "one"], [p + "e1"]),
            oh.make_node("Mul", [p + "half", p + "e1"], [p + "h"]),
            oh.make_node("Mul", [p + "t", p + "h"], [y]),
        ]
        inits += [
            numpy_helper.from_array(np.float32(v), p + name)
            for v, name in zip((*gelu, 1.0), ("divisor", "half", "one"), strict=True)
        ]
    return nodes, inits


def _model(nodes, inits, k, n, inputs=()):
    """A model of x [m, k] (and the other given inputs, as (name, shape)) -> y [m, n]."""
    graph = oh.make_graph(
        nodes,
        "t",
        [oh.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in (("x", ["m", k]), *inputs)],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        initializer=inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("edgedf", 1)])


def _one_node_model(codes, g, bias, k, norm=None, gelu=None):
    """TernaryLinear(x), with the RMSNorm in front and the GELU after it as _layer writes them."""
    return _model(*_layer("", "x", "y", codes, g, bias, norm, gelu), k, len(bias))


RUN_ONE = """
import sys, numpy as np
from edgedf.runtime.backends.openvino import OpenVinoSession
from edgedf.runtime.backends.ov_native import cpu_path
lib, model, x, out = sys.argv[1:]
s = OpenVinoSession(open(model, 'rb').read(), threads=2, extensions=(lib,))
np.savez(out, *s.run({'x': np.load(x)}))
print(cpu_path(lib))
"""


def _cpu_paths():
    flags = set(cpu_info()[1])  # every AVX-512 VNNI CPU has AVX-512 BW too, which that path also needs
    paths = ["scalar"] + ["avx2"] * ("avx2" in flags) + ["avxvnni"] * ("avx2" in flags and "avx_vnni" in flags)
    paths += ["avx512"] * ("avx512_vnni" in flags)
    return paths + ["amx"] * ("avx512_vnni" in flags and "amx_int8" in flags)


ZMM_PATHS = ("avx512", "amx")  # the paths that run edgedf's own attention


def path_name(isa: str) -> str:
    """The name the kernel gives the path that EDGEDF_TERNARY_ISA=isa forces (cpu_path)."""
    return {"avx512": "avx512-vnni", "amx": "amx-int8", "avxvnni": "avx-vnni"}.get(isa, isa)


def _python_on_path(isa, script: str, *args, cwd) -> str:
    """What `python -c script args` prints in its own process on one CPU path: the kernel picks its path once per
    process (EDGEDF_TERNARY_ISA forces one)."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "EDGEDF_TERNARY_ISA": isa},
        cwd=cwd,  # not the checkout, whose edgedf/ would shadow an installed wheel
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _run_on_path(lib, isa, model: bytes, x, tmp_path, every=False):
    """The model's output (every=True: all its outputs, a list) on one CPU path, in its own process. Checks the
    process ran that path."""
    (tmp_path / "m.onnx").write_bytes(model)
    np.save(tmp_path / "x.npy", x)
    out = _python_on_path(isa, RUN_ONE, lib, "m.onnx", "x.npy", "y.npz", cwd=tmp_path)
    assert out.split()[-1] == path_name(isa)
    with np.load(tmp_path / "y.npz") as f:
        outs = [f[f"arr_{i}"] for i in range(len(f.files))]
    return outs if every else outs[0]


@pytest.mark.parametrize("isa", _cpu_paths())
def test_native_kernel_is_bit_exact_on_every_cpu_path(native_kernel, tmp_path, isa):
    for i, (x, codes, g, bias) in enumerate(_cases()):
        model = _one_node_model(codes, g, bias, x.shape[1]).SerializeToString()
        y, ref = _run_on_path(native_kernel, isa, model, x, tmp_path), _reference(x, codes, g, bias)
        assert y.shape == ref.shape
        assert np.array_equal(y, ref), f"case {i}: max |dy| {np.abs(y - ref).max()}"


def _norm(x, seed):
    gamma = np.random.default_rng(seed).uniform(0.5, 1.5, x.shape[1]).astype(np.float32)
    return gamma, np.float32(1e-6), 2.0, -1


def _ops(lib, model: bytes) -> list:
    """The operations OpenVINO reads the ONNX into, with the extension."""
    import openvino as ov

    core = ov.Core()
    core.add_extension(str(lib))
    return core.read_model(model=model, weights=ov.Tensor(np.empty(0, np.uint8))).get_ops()


def _fused_nodes(lib, model: bytes) -> int:
    """TernaryLinear nodes that took their RMSNorm in (6 inputs)."""
    return sum(op.get_type_name() == "TernaryLinear" and len(op.inputs()) == 6 for op in _ops(lib, model))


@pytest.mark.parametrize("isa", _cpu_paths())
def test_fused_rms_norm_is_bit_exact_on_every_cpu_path(native_kernel, tmp_path, isa):
    # the norm in front of each BitLinear runs inside the op; its float operations are the same on every path
    for i, (x, codes, g, bias) in enumerate(_cases()[:5]):
        norm = _norm(x, i)
        model = _one_node_model(codes, g, bias, x.shape[1], norm).SerializeToString()
        assert _fused_nodes(native_kernel, model) == 1
        y = _run_on_path(native_kernel, isa, model, x, tmp_path)
        ref = _reference(_rms_norm(x, *norm[:2]), codes, g, bias)
        assert np.array_equal(y, ref), f"case {i}: max |dy| {np.abs(y - ref).max()}"


SQRT2 = float(np.sqrt(np.float32(2)))


def _gelu(t):
    """GELU, erf form, in float64 (math.erf)."""
    t = t.astype(np.float64)
    return t * 0.5 * (1 + np.vectorize(math.erf)(t / np.sqrt(2)))


# nothing else fused in
PLAIN = {"gelu": False, "chain": False, "residual": False, "splits": 0, "heads": 0} | {
    "q_scale": 1.0,
    "k_scale": 1.0,
    "k_transposed": False,
}


def _op_types(lib, model: bytes) -> list[tuple[str, dict]]:
    """(type, attributes) of each operation."""
    return [(op.get_type_name(), op.get_attributes()) for op in _ops(lib, model)]


@pytest.mark.parametrize("isa", _cpu_paths())
def test_fused_gelu_is_the_same_on_every_cpu_path_and_close_to_erf(native_kernel, tmp_path, isa):
    # the GELU after fc1 runs inside the op on each block of rows; its float operations (fma included) are the same
    # on every path, so each path gives the scalar path's bits, which lie within 1e-6 of GELU with float64 erf
    for i, (x, codes, g, bias) in enumerate(_cases()[:5]):
        x = x * np.float32(3) / np.abs(x).max(1, keepdims=True)  # outputs spread over GELU's curved part
        model = _one_node_model(codes, g, bias, x.shape[1], gelu=(SQRT2, 0.5)).SerializeToString()
        ops = _op_types(native_kernel, model)
        assert [a for t, a in ops if t == "TernaryLinear"] == [PLAIN | {"gelu": True}]
        assert not [t for t, _ in ops if t in ("Erf", "Gelu", "Multiply")]
        y = _run_on_path(native_kernel, isa, model, x, tmp_path)
        t = _reference(x, codes, g, bias)
        assert np.abs(y - _gelu(t)).max() <= 1e-6 * max(1.0, np.abs(t).max()), f"case {i}"
        if isa != "scalar":
            assert np.array_equal(y, _run_on_path(native_kernel, "scalar", model, x, tmp_path)), f"case {i}"


@pytest.mark.parametrize("gelu", [(2.0, 0.5), (SQRT2, 0.25)], ids=["divisor-2", "half-0.25"])
def test_only_the_gelu_itself_is_fused(native_kernel, gelu):
    # a look-alike stays in stock ops (the op without its GELU) and still gives the right answer
    x, codes, g, bias = _cases()[1]
    model = _one_node_model(codes, g, bias, x.shape[1], gelu=gelu).SerializeToString()
    assert [a for t, a in _op_types(native_kernel, model) if t == "TernaryLinear"] == [PLAIN]
    y = ov_backend.OpenVinoSession(model, extensions=(native_kernel,)).run({"x": x})[0]
    t = _reference(x, codes, g, bias).astype(np.float64)
    ref = t * gelu[1] * (1 + np.vectorize(math.erf)(t / gelu[0]))
    assert np.allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("norm", [(4.0, -1), (2.0, 0)], ids=["not-a-square", "other-axis"])
def test_only_the_rms_norm_itself_is_fused(native_kernel, norm):
    # a look-alike (another exponent, another axis) stays in stock ops and still gives the right answer
    x, codes, g, bias = _cases()[1]
    gamma, eps = _norm(x, 0)[:2]
    exponent, axis = norm
    model = _one_node_model(codes, g, bias, x.shape[1], (gamma, eps, exponent, axis)).SerializeToString()
    assert _fused_nodes(native_kernel, model) == 0
    y = ov_backend.OpenVinoSession(model, extensions=(native_kernel,)).run({"x": x})[0]
    xn = x / np.sqrt(np.mean(x**exponent, axis=axis, keepdims=True) + eps) * gamma
    assert np.allclose(y, _reference(xn, codes, g, bias), rtol=1e-3, atol=1e-3 * np.abs(y).max())


def _mlp(seed, m, k, hidden):
    """x [m, k] and the two BitLinears of a ViT block's MLP, (codes, g, bias, norm) each: fc1 k -> hidden, fc2 back."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32) * rng.uniform(0.1, 10, (m, 1)).astype(np.float32)
    layers = []
    for k_in, n in ((k, hidden), (hidden, k)):
        norm = (rng.uniform(0.5, 1.5, k_in).astype(np.float32), np.float32(1e-6), 2.0, -1)
        bias = rng.standard_normal(n).astype(np.float32)
        layers.append((rng.integers(-1, 2, (n, k_in)), np.float32(rng.uniform(0.01, 0.1)), bias, norm))
    return x, layers


def _mlp_model(layers, k, residual=None, fc2_norm=True):
    """fc1 -> GELU -> fc2 (layers as _mlp's; fc2 without its norm where fc2_norm is false), then + the residual:
    "x" (x + fc2, as the ViT block), or (name, shape) for another input added with numpy broadcasting."""
    (c1, g1, b1, n1), (c2, g2, b2, n2) = layers
    nodes, inits = _layer("fc1_", "x", "hid", c1, g1, b1, n1, (SQRT2, 0.5))
    fc2 = _layer("fc2_", "hid", "out" if residual else "y", c2, g2, b2, n2 if fc2_norm else None)
    nodes, inits = nodes + fc2[0], inits + fc2[1]
    inputs = () if residual in (None, "x") else (residual,)
    if residual:
        nodes.append(oh.make_node("Add", [residual if residual == "x" else residual[0], "out"], ["y"]))
    return _model(nodes, inits, k, k, inputs)


@pytest.mark.parametrize("isa", _cpu_paths())
def test_chained_layers_and_residual_are_bit_exact_on_every_cpu_path(native_kernel, tmp_path, isa):
    # fc1 -> GELU -> fc2 -> + x, a BitLinear ViT's MLP, runs as one op that keeps each block's hidden rows in cache:
    # the same bits as the two layers run one after the other (each checked against numpy above), plus x in float32
    for i, (m, k, hidden) in enumerate(((13, 44, 96), (197, 96, 384))):
        x, layers = _mlp(i, m, k, hidden)
        (c1, g1, b1, n1), (c2, g2, b2, n2) = layers
        model = _mlp_model(layers, k, residual="x").SerializeToString()
        ops = _op_types(native_kernel, model)
        assert [a for t, a in ops if t == "TernaryLinear"] == [PLAIN | {"gelu": True, "chain": True, "residual": True}]
        assert not [t for t, _ in ops if t in ("Add", "Multiply", "Erf", "Power")]
        y = _run_on_path(native_kernel, isa, model, x, tmp_path)
        fc1 = _one_node_model(c1, g1, b1, k, n1, (SQRT2, 0.5)).SerializeToString()
        h = _run_on_path(native_kernel, isa, fc1, x, tmp_path)
        fc2 = _one_node_model(c2, g2, b2, hidden, n2).SerializeToString()
        assert np.array_equal(y, _run_on_path(native_kernel, isa, fc2, h, tmp_path) + x), f"case {i}"


@pytest.mark.parametrize("isa", _cpu_paths())
@pytest.mark.parametrize("gelu", [None, (SQRT2, 0.5)], ids=["plain", "gelu"])
def test_a_residual_after_one_layer_is_added_in_the_op(native_kernel, tmp_path, isa, gelu):
    # the attention's x + proj(...): a layer with its norm (and here also a GELU), then Add (operands in either
    # order), taken into the op on every path: the same bits as the layer alone, plus x
    x, codes, g, bias = _cases()[1]
    codes, bias = codes[:, :96], bias[:96]  # N = K: the residual has the output's shape
    x = x[:, :96]
    nodes, inits = _layer("", "x", "t", codes, g, bias, _norm(x, 0), gelu)
    layer = _model(_layer("", "x", "y", codes, g, bias, _norm(x, 0), gelu)[0], inits, 96, 96).SerializeToString()
    expected = _run_on_path(native_kernel, isa, layer, x, tmp_path) + x
    for operands in (["t", "x"], ["x", "t"]):
        model = _model([*nodes, oh.make_node("Add", operands, ["y"])], inits, 96, 96).SerializeToString()
        ops = _op_types(native_kernel, model)
        assert [a for t, a in ops if t == "TernaryLinear"] == [PLAIN | {"residual": True, "gelu": gelu is not None}]
        assert "Add" not in [t for t, _ in ops]
        assert np.array_equal(_run_on_path(native_kernel, isa, model, x, tmp_path), expected), operands


@pytest.mark.parametrize("shape", [[96], [1, 96]], ids=["vector", "one-row"])
def test_a_broadcast_add_stays_an_add(native_kernel, shape):
    # an Add that broadcasts is not a residual: it stays in stock ops (fc1 and fc2 still chained) and is right
    x, layers = _mlp(2, 20, 96, 128)
    r = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    model = _mlp_model(layers, 96, residual=("r", shape)).SerializeToString()
    ops = _op_types(native_kernel, model)
    assert [a for t, a in ops if t == "TernaryLinear"] == [PLAIN | {"gelu": True, "chain": True}]
    assert [t for t, _ in ops].count("Add") == 1
    session = ov_backend.OpenVinoSession(model, extensions=(native_kernel,))
    y, out = (session.run({"x": x, "r": r})[0], session.run({"x": x, "r": np.zeros_like(r)})[0])
    assert np.array_equal(y, out + r)


def test_only_a_layer_with_its_norm_is_chained(native_kernel):
    # fc2 without the RMSNorm in front (not a BitLinear ViT's MLP): two ops, one after the other, still right
    x, layers = _mlp(4, 20, 96, 128)
    model = _mlp_model(layers, 96, fc2_norm=False).SerializeToString()
    ops = [a for t, a in _op_types(native_kernel, model) if t == "TernaryLinear"]
    assert sorted(ops, key=lambda a: a["gelu"]) == [PLAIN, PLAIN | {"gelu": True}]
    y = ov_backend.OpenVinoSession(model, extensions=(native_kernel,)).run({"x": x})[0]
    (c1, g1, b1, n1), (c2, g2, b2, _) = layers
    h = _gelu(_reference(_rms_norm(x, *n1[:2]), c1, g1, b1)).astype(np.float32)
    assert np.allclose(y, _reference(h, c2, g2, b2), rtol=1e-4, atol=1e-3 * np.abs(y).max())


def _qkv_model(codes, g, bias, tokens, heads, perm=(2, 0, 3, 1, 4), stacked=False):
    """x [B, T, K] -> qkv TernaryLinear -> Reshape [-1, T, 3, H, D] -> Transpose(perm) -> q, k, v = Gather 0, 1, 2:
    the attention's split as PyTorch exports it (and, where stacked, the permuted tensor itself as an output too)."""
    k, n = codes.shape[1], codes.shape[0]
    nodes = [
        oh.make_node("TernaryLinear", ["x", "w", "g", "b"], ["t"], domain="edgedf"),
        oh.make_node("Reshape", ["t", "shape"], ["r"], allowzero=1),
        oh.make_node("Transpose", ["r"], ["p"], perm=list(perm)),
        *(oh.make_node("Gather", ["p", f"i{i}"], [out], axis=0) for i, out in enumerate("qkv")),
    ]
    inits = [
        numpy_helper.from_array(pack(codes), "w"),
        numpy_helper.from_array(np.asarray(g, np.float32), "g"),
        numpy_helper.from_array(bias, "b"),
        numpy_helper.from_array(np.array([-1, tokens, 3, heads, n // (3 * heads)], np.int64), "shape"),
        *(numpy_helper.from_array(np.array(i, np.int64), f"i{i}") for i in range(3)),
    ]
    outputs = [oh.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("qkvp" if stacked else "qkv")]
    graph = oh.make_graph(
        nodes, "t", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["b", tokens, k])], outputs, initializer=inits
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("edgedf", 1)])


@pytest.mark.parametrize("isa", _cpu_paths())
def test_qkv_is_written_in_the_attentions_layout_on_every_cpu_path(native_kernel, tmp_path, isa):
    # the split into heads runs inside the op, which writes q, k and v as the attention reads them: bit for bit what
    # the plain op's output permuted gives on every path, at batch sizes whose rows end inside a tile and span several
    # blocks
    _, codes, g, bias = _cases()[1]  # K = 384, N = 96 = 3 x 2 heads x 16
    model = _qkv_model(codes, g, bias, tokens=5, heads=2).SerializeToString()
    ops = _op_types(native_kernel, model)
    assert [a for t, a in ops if t == "TernaryLinear"] == [PLAIN | {"splits": 3, "heads": 2}]
    assert not [t for t, _ in ops if t in ("Transpose", "Gather")]
    rng = np.random.default_rng(3)
    for batch in (1, 7, 26):
        x = rng.standard_normal((batch, 5, 384)).astype(np.float32)
        ref = _reference(x.reshape(batch * 5, -1), codes, g, bias).reshape(batch, 5, 3, 2, 16).transpose(2, 0, 3, 1, 4)
        outs = _run_on_path(native_kernel, isa, model, x, tmp_path, every=True)
        for i in range(3):
            assert np.array_equal(outs[i], ref[i]), f"batch {batch}, output {i}"


def test_qkv_stacked_too_is_the_permuted_output(native_kernel):
    # where the permuted tensor itself is an output as well, it is the stack of q, k and v
    x2, codes, g, bias = _cases()[1]
    model = _qkv_model(codes, g, bias, tokens=5, heads=2, stacked=True).SerializeToString()
    ops = [a for t, a in _op_types(native_kernel, model) if t == "TernaryLinear"]
    assert ops == [PLAIN | {"splits": 3, "heads": 2}]
    x = x2[:35].reshape(7, 5, -1)
    ref = _reference(x.reshape(35, -1), codes, g, bias).reshape(7, 5, 3, 2, 16).transpose(2, 0, 3, 1, 4)
    outs = ov_backend.OpenVinoSession(model, extensions=(native_kernel,)).run({"x": x})
    for i in range(3):
        assert np.array_equal(outs[i], ref[i])
    assert np.array_equal(outs[3], ref)


def test_only_the_heads_split_itself_is_fused(native_kernel):
    # another permutation of the same reshape stays a Transpose (and Gathers), and is right
    x2, codes, g, bias = _cases()[1]
    model = _qkv_model(codes, g, bias, tokens=5, heads=2, perm=(2, 0, 1, 3, 4)).SerializeToString()
    ops = _op_types(native_kernel, model)
    assert [a for t, a in ops if t == "TernaryLinear"] == [PLAIN]
    assert [t for t, _ in ops].count("Gather") == 3
    x = x2[:10].reshape(2, 5, -1)
    ref = _reference(x.reshape(10, -1), codes, g, bias).reshape(2, 5, 3, 2, 16).transpose(2, 0, 1, 3, 4)
    outs = ov_backend.OpenVinoSession(model, extensions=(native_kernel,)).run({"x": x})
    for i in range(3):
        assert np.array_equal(outs[i], ref[i])


# PyTorch's export splits SDPA's 1 / sqrt(D) between q and k, D ** -0.25 on each: here a ViT's (D = 64), which is no
# power of two (so that any other rounding shows)
SCALE = np.float32(64**-0.25)


def _attention_model(codes, g, bias, tokens, heads, kt_perm=(0, 2, 1), outputs=("y", "s")):
    """_qkv_model's q, k, v into the attention as PyTorch exports scaled_dot_product_attention(q, k, v):
    Softmax(Mul(q, c) @ Mul(c, Reshape(Transpose(Reshape(k, [-1, T, D]), [0, 2, 1]), [-1, H, D, T]))) @ v -> y,
    the scores -> s, and the ViT's y.transpose(1, 2).reshape(b, n, d) -> yt; `outputs` of these or q, k, v. Another
    kt_perm is not k's transpose."""
    model = _qkv_model(codes, g, bias, tokens, heads)
    d = codes.shape[0] // (3 * heads)
    nodes = [
        oh.make_node("Mul", ["q", "c"], ["qs"]),
        oh.make_node("Reshape", ["k", "s3"], ["k3"]),
        oh.make_node("Transpose", ["k3"], ["k3t"], perm=list(kt_perm)),
        oh.make_node("Reshape", ["k3t", "s4"], ["kt"]),
        oh.make_node("Mul", ["c", "kt"], ["kts"]),
        oh.make_node("MatMul", ["qs", "kts"], ["s"]),
        oh.make_node("Softmax", ["s"], ["p"], axis=-1),
        oh.make_node("MatMul", ["p", "v"], ["y"]),
        oh.make_node("Transpose", ["y"], ["y2"], perm=[0, 2, 1, 3]),
        oh.make_node("Reshape", ["y2", "s5"], ["yt"]),
    ]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(SCALE, "c"),
            numpy_helper.from_array(np.array([-1, tokens, d], np.int64), "s3"),
            numpy_helper.from_array(np.array([-1, heads, d, tokens], np.int64), "s4"),
            numpy_helper.from_array(np.array([-1, tokens, heads * d], np.int64), "s5"),
        ]
    )
    del model.graph.output[:]
    model.graph.output.extend(oh.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs)
    return model


def _attention_reference(x, codes, g, bias, heads):
    """y and the scores of _attention_model in float64 from the op's float32 q, k, v scaled in float32."""
    b, t, _ = x.shape
    q, k, v = _reference(x.reshape(b * t, -1), codes, g, bias).reshape(b, t, 3, heads, -1).transpose(2, 0, 3, 1, 4)
    s = (q * SCALE).astype(np.float64) @ (k * SCALE).astype(np.float64).swapaxes(-1, -2)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v.astype(np.float64), s


@pytest.mark.parametrize("isa", _cpu_paths())
def test_the_attentions_q_and_k_are_scaled_and_k_transposed_in_the_op_on_every_cpu_path(native_kernel, tmp_path, isa):
    # q * c and k^T * c come out of the qkv op itself (no Multiply, no Transpose left), the same float products: the
    # scores are those of the op's q and k scaled in float32 to float32's precision, on every path, at batch sizes
    # whose rows end inside a tile, span several blocks and several images per block; v comes from the same op.
    # with 13 tokens an image's rows run across 6-row tiles and into the next block, and D = 12 is no power of two
    _, codes, g, bias = _cases()[1]  # K = 384, N = 96 = 3 x 2 heads x 16
    rng = np.random.default_rng(4)
    attrs = PLAIN | {"splits": 3, "heads": 2, "q_scale": float(SCALE), "k_scale": float(SCALE), "k_transposed": True}
    for tokens, n in ((5, 96), (13, 72)):
        model = _attention_model(codes[:n], g, bias[:n], tokens=tokens, heads=2).SerializeToString()
        ops = _op_types(native_kernel, model)
        assert [a for t, a in ops if t == "TernaryLinear"] == [attrs]
        assert not [t for t, _ in ops if t in ("Multiply", "Transpose", "Gather")]
        for batch in (1, 7, 26):
            x = rng.standard_normal((batch, tokens, 384)).astype(np.float32)
            y, s = _run_on_path(native_kernel, isa, model, x, tmp_path, every=True)
            y_ref, s_ref = _attention_reference(x, codes[:n], g, bias[:n], heads=2)
            assert np.allclose(s, s_ref, rtol=1e-5, atol=1e-5 * np.abs(s_ref).max()), f"batch {batch}, T {tokens}"
            assert np.allclose(y, y_ref, rtol=1e-5, atol=1e-5 * np.abs(y_ref).max()), f"batch {batch}, T {tokens}"
    # bit for bit: with one value per head (D = 1) each score is one product, q * c times k * c, in any order of sums
    codes1 = rng.integers(-1, 2, (6, 384))
    model = _attention_model(codes1, g, bias[:6], tokens=5, heads=2).SerializeToString()
    x = rng.standard_normal((7, 5, 384)).astype(np.float32)
    q, k, _ = _reference(x.reshape(35, -1), codes1, g, bias[:6]).reshape(7, 5, 3, 2, 1).transpose(2, 0, 3, 1, 4)
    s = _run_on_path(native_kernel, isa, model, x, tmp_path, every=True)[1]
    assert np.array_equal(s, (q * SCALE) @ (k * SCALE).swapaxes(-1, -2))


def test_the_attention_reads_the_same_q_k_v_on_every_cpu_path(native_kernel, tmp_path):
    # q (scaled), k^T (scaled) and v as each path's op writes them into the attention's layout: the scores and v are
    # the same bit for bit on every path, not only each close to the float64 reference, and so is the attention's
    # output on every path that runs the same attention (edgedf's on AVX-512, OpenVINO's on the others)
    _, codes, g, bias = _cases()[1]  # N = 96 = 3 x 2 heads x D = 16: q, k and v share 6-row tiles of 4 blocks
    model = _attention_model(codes[:96], g, bias[:96], tokens=5, heads=2, outputs=("s", "v", "y")).SerializeToString()
    x = np.random.default_rng(5).standard_normal((7, 5, 384)).astype(np.float32)  # images across tiles
    outs = {isa: _run_on_path(native_kernel, isa, model, x, tmp_path, every=True) for isa in _cpu_paths()}
    for isa, out in outs.items():
        same = next(p for p in outs if (p in ZMM_PATHS) == (isa in ZMM_PATHS))
        for name, o, r in zip(("scores", "v", "y"), out, [*outs["scalar"][:2], outs[same][2]], strict=True):
            assert np.array_equal(o, r), f"{isa}: {name}, max diff {np.abs(o - r).max()}"


OPS_ON_PATH = """
import sys, numpy as np, openvino as ov
core = ov.Core()
core.add_extension(sys.argv[1])
model = core.read_model(model=open(sys.argv[2], 'rb').read(), weights=ov.Tensor(np.empty(0, np.uint8)))
print(' '.join(op.get_type_name() for op in model.get_ops()))
"""


def _op_types_on_path(lib, isa, model: bytes, tmp_path) -> list[str]:
    """The operations OpenVINO reads the ONNX into in a process on one CPU path."""
    (tmp_path / "m.onnx").write_bytes(model)
    return _python_on_path(isa, OPS_ON_PATH, lib, "m.onnx", cwd=tmp_path).split()


@pytest.mark.parametrize("isa", _cpu_paths())
def test_the_attention_is_one_op_on_avx512_and_close_to_float64_on_every_cpu_path(native_kernel, tmp_path, isa):
    # on AVX-512 paths MatMul, Softmax, MatMul and the Transpose back to token order become one Attention op that
    # writes [B, T, H, D] itself; elsewhere OpenVINO's own ops stay. Either is float32 softmax(q k^T) v to within
    # float32's precision, at T and D that end inside a 16-wide vector, span several 64-wide steps, and the ViT-S's
    # T = 197, D = 64, over batches whose query rows are shared out across heads and images
    rng = np.random.default_rng(6)
    for tokens, heads, d, batch in ((5, 2, 16, 7), (13, 2, 12, 3), (197, 6, 64, 2), (40, 1, 80, 4), (17, 3, 24, 1)):
        codes = rng.integers(-1, 2, (3 * heads * d, 96))
        g, bias = np.float32(0.05), rng.standard_normal(3 * heads * d).astype(np.float32)
        model = _attention_model(codes, g, bias, tokens, heads, outputs=("yt",)).SerializeToString()
        ops = _op_types_on_path(native_kernel, isa, model, tmp_path)
        if isa in ZMM_PATHS:
            assert ops.count("Attention") == 1 and not {"MatMul", "Softmax", "Transpose"} & set(ops), ops
        else:
            assert "Attention" not in ops and ops.count("MatMul") == 2, ops
        x = rng.standard_normal((batch, tokens, 96)).astype(np.float32)
        y = _run_on_path(native_kernel, isa, model, x, tmp_path)
        y_ref = _attention_reference(x, codes, g, bias, heads)[0].transpose(0, 2, 1, 3).reshape(batch, tokens, -1)
        assert y.shape == y_ref.shape
        assert np.allclose(y, y_ref, rtol=1e-5, atol=1e-5 * np.abs(y_ref).max()), f"T {tokens}, D {d}, batch {batch}"


@pytest.mark.skipif("avx512" not in _cpu_paths(), reason="the Attention op is made on AVX-512 CPUs only")
def test_an_attention_op_moved_to_a_cpu_without_avx512_runs_its_scalar_loop(native_kernel, tmp_path):
    # a model read (and so fused) here and saved as OpenVINO IR still runs where the CPU has no AVX-512
    import openvino as ov

    rng = np.random.default_rng(7)
    codes, bias = rng.integers(-1, 2, (3 * 2 * 24, 96)), rng.standard_normal(3 * 2 * 24).astype(np.float32)
    onnx_model = _attention_model(codes, np.float32(0.05), bias, 17, 2, outputs=("yt",)).SerializeToString()
    core = ov.Core()
    core.add_extension(str(native_kernel))
    model = core.read_model(model=onnx_model, weights=ov.Tensor(np.empty(0, np.uint8)))
    assert [op.get_type_name() for op in model.get_ops()].count("Attention") == 1
    ov.save_model(model, tmp_path / "m.xml", compress_to_fp16=False)
    run = """
import sys, numpy as np, openvino as ov
core = ov.Core()
core.add_extension(sys.argv[1])
compiled = core.compile_model(core.read_model('m.xml'), 'CPU')
np.save('y.npy', compiled(np.load('x.npy'))[0])
"""
    x = rng.standard_normal((3, 17, 96)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    _python_on_path("scalar", run, native_kernel, cwd=tmp_path)
    y_ref = _attention_reference(x, codes, np.float32(0.05), bias, 2)[0].transpose(0, 2, 1, 3).reshape(3, 17, -1)
    assert np.allclose(np.load(tmp_path / "y.npy"), y_ref, rtol=1e-5, atol=1e-5 * np.abs(y_ref).max())


def test_attention_inputs_are_taken_in_only_as_pytorch_exports_them(native_kernel):
    # another axis order after the inner Reshape is not k's transpose: Multiply and Transpose stay, and are right;
    # where q is an output too, the op that gives it stays beside the one that feeds the scores: all stay right
    x2, codes, g, bias = _cases()[1]
    x = x2[:35].reshape(7, 5, -1)
    y_ref, s_ref = _attention_reference(x, codes, g, bias, heads=2)
    q, k, _ = _reference(x.reshape(35, -1), codes, g, bias).reshape(7, 5, 3, 2, 16).transpose(2, 0, 3, 1, 4)
    model = _attention_model(codes, g, bias, tokens=5, heads=2, kt_perm=(0, 1, 2)).SerializeToString()
    ops = _op_types(native_kernel, model)
    assert [a for t, a in ops if t == "TernaryLinear"] == [PLAIN | {"splits": 3, "heads": 2}]
    assert [t for t, _ in ops].count("Multiply") == 2
    s = ov_backend.OpenVinoSession(model, extensions=(native_kernel,)).run({"x": x})[1]
    k_other = (k * SCALE).reshape(7, 2, 16, 5)  # [T, D] read as [D, T]: k's values in another order
    s_other = (q * SCALE).astype(np.float64) @ k_other
    assert np.allclose(s, s_other, rtol=1e-5, atol=1e-5 * np.abs(s_other).max())
    model = _attention_model(codes, g, bias, tokens=5, heads=2, outputs=("y", "s", "q")).SerializeToString()
    ops = [a for t, a in _op_types(native_kernel, model) if t == "TernaryLinear"]
    assert sorted(a["k_transposed"] for a in ops) == [False, True]
    y, s, q_out = ov_backend.OpenVinoSession(model, extensions=(native_kernel,)).run({"x": x})
    assert np.allclose(y, y_ref, rtol=1e-5, atol=1e-5 * np.abs(y_ref).max())
    assert np.allclose(s, s_ref, rtol=1e-5, atol=1e-5 * np.abs(s_ref).max())
    assert np.array_equal(q_out, q)  # unscaled


def test_other_transposes_and_gathers_convert_as_openvinos_own(native_kernel):
    # the kernel converts every ONNX Transpose and Gather (to find the heads split): the rest as ONNX defines them
    nodes = [
        oh.make_node("Transpose", ["x"], ["t"]),  # no perm: the axes reversed
        oh.make_node("Gather", ["t", "i"], ["g"], axis=1),
        oh.make_node("Transpose", ["g"], ["y"], perm=[1, 0, 2, 3]),
    ]
    graph = oh.make_graph(
        nodes,
        "t",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array([[2, 0], [1, 1]], np.int64), "i")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]).SerializeToString()
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    y = ov_backend.OpenVinoSession(model, extensions=(native_kernel,)).run({"x": x})[0]
    ref = np.take(x.transpose(2, 1, 0), np.array([[2, 0], [1, 1]]), axis=1).transpose(1, 0, 2, 3)
    assert y.shape == ref.shape and np.array_equal(y, ref)


def test_stock_op_fallback_matches_the_kernel(native_kernel):
    # OpenVINO turns the stock form's 127 / absmax into a reciprocal multiply, so a code sitting on a .5
    # boundary may round the other way: one code is 1 / (127 K) of a row's scale |x|max * K * g
    for x, codes, g, bias in _cases():
        model = _one_node_model(codes, g, bias, x.shape[1]).SerializeToString()
        native = ov_backend.OpenVinoSession(model, extensions=(native_kernel,)).run({"x": x})[0]
        stock = ov_backend.OpenVinoSession(expand_ternary_linear(model)).run({"x": x})[0]
        row_scale = np.abs(x).max(1, keepdims=True) * x.shape[1] * g
        assert (np.abs(stock - native) / row_scale).max() <= 2 / (127 * x.shape[1])


def test_invalid_packed_weights_are_refused(native_kernel):
    # the unused 2-bit value 3 would be a code of 2, which would overflow the AVX2 path's int16 sums
    x, codes, g, bias = _cases()[0]
    model = _one_node_model(codes, g, bias, x.shape[1])
    w = next(i for i in model.graph.initializer if i.name == "w")
    arr = numpy_helper.to_array(w).copy()
    arr[0, 0] = 0xFF
    w.CopyFrom(numpy_helper.from_array(arr, "w"))
    session = ov_backend.OpenVinoSession(model.SerializeToString(), extensions=(native_kernel,))
    with pytest.raises(Exception, match="unused 2-bit value 3"):
        session.run({"x": x})


def test_build_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEDF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native_build, "compiler", lambda: None)
    with pytest.raises(EdgedfError, match=r"no C\+\+ compiler"):
        ov_native.build()
    assert not list(tmp_path.rglob("*.so*"))  # nothing half-written
    monkeypatch.setattr(native_build, "compiler", lambda: "g++")
    monkeypatch.setattr(ov_native, "SOURCE", tmp_path / "broken.cpp")
    (tmp_path / "broken.cpp").write_text("this is not C++\n")
    with pytest.raises(EdgedfError, match="building the native ternary kernel failed") as e:
        ov_native.build()
    assert "\n" not in str(e.value)
    assert not list(tmp_path.rglob("*.so*"))


TWO_BUILDS = """
import ctypes, os, sys
paths = []
for lib, isa in zip(sys.argv[1:], ("scalar", "avx2")):
    os.environ["EDGEDF_TERNARY_ISA"] = isa  # read once per library, at its first call
    fn = ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL).edgedf_ternary_isa
    fn.restype = ctypes.c_char_p
    paths.append(fn().decode())
print(*paths)
"""


@pytest.mark.skipif("avx2" not in cpu_info()[1], reason="needs two CPU paths to tell the builds apart")
def test_two_builds_in_one_process_keep_their_own_state(native_kernel, tmp_path):
    # ab_native.py loads an old and a new build side by side; a function-local static left a GNU unique symbol,
    # so both builds shared the first one's CPU path (and read its number in their own enum)
    other = tmp_path / "other.cpp"
    other.write_text(ov_native.SOURCE.read_text() + "// another build\n")
    second = ov_native.build(source=other)
    assert second != native_kernel
    proc = subprocess.run([sys.executable, "-c", TWO_BUILDS, str(native_kernel), str(second)], capture_output=True,
                          text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["scalar", "avx2"]


def test_module_cli_builds_and_names_the_path(native_kernel, tmp_path):
    cmd = [sys.executable, "-m", "edgedf.runtime.backends.ov_native"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == str(native_kernel)
    assert proc.stdout.splitlines()[1].split(": ")[1] in ("amx-int8", "avx512-vnni", "avx-vnni", "avx2", "scalar")
