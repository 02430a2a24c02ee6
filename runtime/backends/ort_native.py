"""edgedf's native `edgedf::TernaryLinear` kernel for ONNX Runtime (runtime/native/ort_ternary.cpp).

ONNX Runtime's wheel ships no C headers, so edgedf carries the one its custom ops need (the C API, MIT; see
runtime/native/third_party/onnxruntime/LICENSE). The op is compiled here on first use (a few seconds with g++),
once per kernel source, into a cache, and registered with each ONNX Runtime session that opens a `native` bundle:

    $EDGEDF_CACHE_DIR/ort_ext/  (default ~/.cache/edgedf/ort_ext/)
    python -m edgedf.runtime.backends.ort_native      # build now; prints the library and the CPU path it uses

The kernel is the OpenVINO op's (ternary_core.hpp): BitNet's per-token int8 codes exactly, a ternary GEMM on the
CPU's best path (AMX, AVX-512 VNNI, AVX-VNNI, AVX2, scalar). Where it cannot be built (no C++ compiler, not Linux)
or is switched off (EDGEDF_NATIVE=0), and on CPUs where it would not pay (not x86-64, no AVX2), a `native` bundle
still runs: ONNX Runtime runs each TernaryLinear as the ONNX function the bundle carries, BitNet's integer arithmetic
in stock ops, which its optimiser fuses into what the `int8-exact` lowering writes (the same codes, its speed).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from functools import cache
from pathlib import Path

from ..errors import EdgedfError
from . import native_build
from .native_build import cpu_path  # noqa: F401 - part of this module's interface

SOURCE = native_build.NATIVE / "ort_ternary.cpp"
HEADER = native_build.NATIVE / "third_party" / "onnxruntime" / "onnxruntime_c_api.h"
MIN_ORT = (1, 21)  # the C API version the header declares: the op loads into this release and every later one


def library_path(source: Path | None = None) -> Path:
    header = hashlib.sha256(HEADER.read_bytes()).hexdigest()
    return native_build.library_path("ort_ext", "libedgedf_ort_ternary", source or SOURCE, header)


def build(force: bool = False, source: Path | None = None) -> Path:
    """The compiled op library, building it if needed. One-line EdgedfError when it cannot be built."""
    source = source or SOURCE
    out = library_path(source)
    if out.exists() and not force:
        return out
    return native_build.compile_library(out, source, [], "the native ternary kernel for ONNX Runtime")


def _ort_version() -> tuple[int, int]:
    import onnxruntime

    return tuple(int(p) for p in onnxruntime.__version__.split(".")[:2])  # type: ignore[return-value]


@cache
def library() -> Path:
    """The op library for this process (built once), where it beats ONNX Runtime's own int8 kernels: x86-64 with
    AVX2 (its scalar path would not). Set EDGEDF_NATIVE=0 to never use it."""
    if os.environ.get("EDGEDF_NATIVE", "1") == "0":
        raise EdgedfError("the native ternary kernel is switched off (EDGEDF_NATIVE=0)")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise EdgedfError(f"the native ternary kernel is for x86-64 CPUs (this is {platform.machine()})")
    if _ort_version() < MIN_ORT:
        raise EdgedfError(f"the native ternary kernel needs ONNX Runtime {'.'.join(map(str, MIN_ORT))} or later")
    lib = build()
    if cpu_path(lib) == "scalar" and "EDGEDF_TERNARY_ISA" not in os.environ:
        raise EdgedfError("the native ternary kernel needs AVX2, which this CPU does not have")
    return lib


def fuse(model: bytes) -> bytes:
    """The canonical graph with what surrounds each TernaryLinear taken into it, for edgedf's op: the RMSNorm in
    front (inputs norm_weight, norm_eps), the GELU after it (attribute gelu) and a residual add after it (input
    residual), as the OpenVINO op's conversion does (runtime/native/ternary_linear.cpp). The norm, GELU and add nodes
    drop out where nothing else reads them. Needs the onnx package; without it, the graph as it is."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        _note("edgedf: onnx is not installed, so edgedf's op runs without the norm, GELU and residual fused in "
              "(pip install onnx)")  # fmt: skip
        return model
    proto = onnx.load_from_string(model)
    g = proto.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    kept_outputs = {o.name for o in g.output}

    def made_by(name: str, op: str):
        n = producer.get(name)
        return n if n is not None and n.op_type == op and not n.domain else None

    def const(name: str, value: float | None = None) -> bool:
        v = consts.get(name)
        return v is not None and v.size == 1 and (value is None or abs(float(v.reshape(())) - value) < 1e-6)

    def only_reader(name: str):
        r = readers.get(name, [])
        return r[0] if len(r) == 1 and name not in kept_outputs else None

    def other(n, name: str) -> str:
        return n.input[1] if n.input[0] == name else n.input[0]

    def norm_of(x: str) -> list[str] | None:
        """[x before the norm, weight, eps] where x = Mul(Div(x0, Sqrt(Add(ReduceMean(Pow(x0, 2), -1), eps))), w)."""
        mul = made_by(x, "Mul")
        for a, w in ((0, 1), (1, 0)) if mul is not None else ():
            div = made_by(mul.input[a], "Div")
            sqrt = made_by(div.input[1], "Sqrt") if div is not None else None
            add = made_by(sqrt.input[0], "Add") if sqrt is not None else None
            if add is None or mul.input[w] not in consts:
                continue
            for m, e in ((0, 1), (1, 0)):
                mean = made_by(add.input[m], "ReduceMean")
                pw = made_by(mean.input[0], "Pow") if mean is not None else None
                keepdims = [a.i for a in mean.attribute if a.name == "keepdims"] if mean is not None else []
                last = mean is not None and (
                    (len(mean.input) > 1 and const(mean.input[1], -1)) or
                    any(a.name == "axes" and list(a.ints) == [-1] for a in mean.attribute)
                )  # fmt: skip
                if (pw is not None and last and keepdims in ([], [1]) and const(add.input[e]) and const(pw.input[1], 2)
                        and pw.input[0] == div.input[0] and consts[mul.input[w]].ndim == 1):  # fmt: skip
                    return [div.input[0], mul.input[w], add.input[e]]
        return None

    def gelu_of(t: str) -> list | None:
        """The nodes of Mul(t, Mul(0.5, Add(Erf(Div(t, sqrt 2)), 1))) (nn.GELU() as PyTorch exports it), or None."""
        r = readers.get(t, [])
        div = next((n for n in r if n.op_type == "Div" and n.input[0] == t and const(n.input[1], 2**0.5)), None)
        erf = only_reader(div.output[0]) if div is not None else None
        add = only_reader(erf.output[0]) if erf is not None and erf.op_type == "Erf" else None
        half = only_reader(add.output[0]) if add is not None and add.op_type == "Add" else None
        out = only_reader(half.output[0]) if half is not None and half.op_type == "Mul" else None
        if out is None or out.op_type != "Mul" or len(r) != 2 or other(out, half.output[0]) != t:
            return None
        ok = const(other(add, erf.output[0]), 1.0) and const(other(half, add.output[0]), 0.5)
        return [div, erf, add, half, out] if ok else None

    shapes = _shapes(proto)
    normed: dict[str, int] = {}  # x in front of a fused norm -> the norm's width (K): the blocks' residual stream
    order = {o: i for i, n in enumerate(g.node) for o in n.output}
    order.update({v.name: -1 for v in g.input}, **{name: -1 for name in consts})
    replaced: set[str] = set()  # outputs of the GELU and add nodes taken into an op
    for node in g.node:
        if node.op_type != "TernaryLinear" or node.domain != "edgedf" or len(node.input) != 4:
            continue
        inputs = list(node.input)
        norm = norm_of(inputs[0])
        if norm is not None:
            inputs[0] = norm[0]
            normed[norm[0]] = int(consts[norm[1]].size)
            inputs += norm[1:]
        out = node.output[0]
        gelu = gelu_of(out)
        if gelu is not None:
            node.attribute.append(onnx.helper.make_attribute("gelu", 1))
            replaced.update(n.output[0] for n in gelu)
            out = gelu[-1].output[0]
        add = only_reader(out)
        if add is not None and add.op_type == "Add" and not add.domain:
            # the residual: computed before the op, and the residual stream of the output's width in a BitLinear
            # ViT or, where shape inference gets that far, any tensor of the output's shape (never a broadcast).
            # The op checks the shapes when it runs.
            res = other(add, out)
            stream = res in normed and normed[res] == _out_features(consts.get(node.input[1]))
            if order.get(res, len(g.node)) < order[node.output[0]] and (
                stream or _same_shape(shapes, res, add.output[0])
            ):
                inputs += [""] * (6 - len(inputs)) + [res]
                replaced.add(add.output[0])
                out = add.output[0]
        del node.input[:]
        node.input.extend(inputs)
        node.output[0] = out  # the last fused node's output: its readers now read the op's
    fused = [n for n in g.node if n.op_type == "TernaryLinear" or n.output[0] not in replaced]
    del g.node[:]
    g.node.extend(fused)
    _drop_dead(g, kept_outputs)
    return proto.SerializeToString()


def _shapes(proto) -> dict[str, tuple | None]:
    """Each tensor's shape as ONNX's shape inference gives it (dims as values or names), where it gives one."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # an inference failure only means no residual is fused
        return {}
    out: dict[str, tuple | None] = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = v.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in t.shape.dim)
        out[v.name] = None if None in dims else dims
    return out


def _out_features(w_packed) -> int | None:
    return int(w_packed.shape[0]) if w_packed is not None and w_packed.ndim == 2 else None


def _same_shape(shapes: dict, a: str, b: str) -> bool:
    """Whether shape inference says a and b have one shape: the same rank, each dimension the same number or unknown
    in both (the op checks the shapes when it runs)."""
    sa, sb = shapes.get(a), shapes.get(b)
    if sa is None or sb is None or len(sa) != len(sb):
        return False
    return all(x == y if isinstance(x, int) or isinstance(y, int) else True for x, y in zip(sa, sb, strict=True))


def _drop_dead(g, kept: set[str]) -> None:
    """Nodes none of whose outputs are read any more (the fused-in norms, GELUs and adds), last first."""
    live = set(kept)
    keep = []
    for n in reversed(g.node):
        if any(o in live for o in n.output):
            keep.append(n)
            live.update(n.input)
    del g.node[:]
    g.node.extend(reversed(keep))
    used = [i for i in g.initializer if i.name in live]
    del g.initializer[:]
    g.initializer.extend(used)


_noted: set[str] = set()


def _note(msg: str) -> None:
    if msg not in _noted:
        _noted.add(msg)
        print(msg, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        lib = build(force="--force" in argv)
    except EdgedfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{lib}\nkernel: {cpu_path(lib)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
