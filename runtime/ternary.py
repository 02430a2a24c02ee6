"""Load-time expansion of ternary nodes for backends that cannot run them as they are (TensorRT, OpenVINO).

A bundle keeps ternary weights 2-bit on disk. `expand_packed_ternary`: every `edgedf::UnpackTernary` node
(lowered graphs) becomes the int8 initializer it computes. `expand_ternary_linear`: every canonical
`edgedf::TernaryLinear` (OpenVINO `native` bundles where the native kernel cannot be built) becomes its
arithmetic in stock ops. Only standard ops remain. `fold_constant_inputs`: MatMulNBits' weight expressions become
the constants OpenVINO needs. numpy + onnx only (no torch): this runs on the device.

    python -m edgedf.runtime.ternary BUNDLE_OR_ONNX OUT.onnx    # e.g. before trtexec
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np

from .errors import EdgedfError

DOMAIN = "edgedf"
EPS = 1e-5  # train.bitlinear.EPS (the per-token quantiser's floor)


def unpack_ternary_np(packed: np.ndarray, k: int | None = None) -> np.ndarray:
    """uint8 [N, ceil(K/4)] -> int8 codes [N, K] (inverse of train.bitlinear.pack_ternary)."""
    u = (packed[..., None] >> np.array([0, 2, 4, 6], np.uint8)) & 3
    codes = u.reshape(*packed.shape[:-1], -1).astype(np.int8) - 1
    return codes if k is None else codes[..., :k]


def _load(onnx_bytes: bytes):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise EdgedfError("expanding ternary weights needs the onnx package: pip install onnx") from None
    return onnx, numpy_helper, onnx.load_from_string(onnx_bytes)


def _rewrite(onnx_bytes: bytes, rewrite) -> bytes:
    """Replace edgedf nodes: rewrite(node, constant arrays, helpers) -> (nodes, new initializers); then drop
    the unused initializers, the edgedf functions and their opset import, so only standard ops remain."""
    onnx, numpy_helper, model = _load(onnx_bytes)
    consts = {i.name: i for i in model.graph.initializer}
    keep_nodes, new_inits = [], []
    for node in model.graph.node:
        if node.domain != DOMAIN:
            keep_nodes.append(node)
            continue
        nodes, arrays = rewrite(node, partial(_const, numpy_helper, consts, node), onnx.helper)
        keep_nodes.extend(nodes)
        new_inits.extend(numpy_helper.from_array(np.asarray(a), name) for name, a in arrays.items())
    del model.graph.node[:]
    model.graph.node.extend(keep_nodes)
    model.graph.initializer.extend(new_inits)
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    del model.functions[:]
    keep_ops = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep_ops)
    return model.SerializeToString()


def _const(numpy_helper, consts, node, name: str) -> np.ndarray:
    if name not in consts:
        raise EdgedfError(f"{node.op_type} {node.name} is not fed by a constant; cannot expand")
    return numpy_helper.to_array(consts[name])


def expand_packed_ternary(onnx_bytes: bytes) -> bytes:
    """Every UnpackTernary becomes the int8 initializer it computes (for TensorRT and OpenVINO)."""

    def rewrite(node, const, helper):
        if node.op_type != "UnpackTernary":
            raise EdgedfError(f"{node.op_type} nodes must be lowered before a TensorRT build")
        return [], {node.output[0]: np.ascontiguousarray(unpack_ternary_np(const(node.input[0])).T)}

    return _rewrite(onnx_bytes, rewrite)


def expand_ternary_linear(onnx_bytes: bytes) -> bytes:
    """The canonical TernaryLinear in stock ops, for OpenVINO where the native kernel cannot be built: the
    per-token quantiser (Round(x * s), s = 127 / max(absmax, eps)) and a float MatMul with the ternary weights
    times g, plus the bias. About fp32 speed; the 2-bit file stays as it is. OpenVINO computes the division as
    a reciprocal multiply, so a code sitting on a .5 boundary can round the other way than in PyTorch."""

    def rewrite(node, const, helper):
        if node.op_type != "TernaryLinear":
            raise EdgedfError(f"cannot expand {node.op_type} nodes")
        x, w_packed, w_scale, bias = node.input
        w_t = (unpack_ternary_np(const(w_packed)).astype(np.float32) * const(w_scale).astype(np.float32)).T
        names = ("abs", "amax", "amaxc", "s", "xs", "q", "xq", "mm", "w", "axes", "eps", "c127")
        t = {k: f"{node.output[0]}__{k}" for k in names}
        mk = helper.make_node
        nodes = [
            mk("Abs", [x], [t["abs"]]),
            mk("ReduceMax", [t["abs"], t["axes"]], [t["amax"]], keepdims=1),
            mk("Max", [t["amax"], t["eps"]], [t["amaxc"]]),
            mk("Div", [t["c127"], t["amaxc"]], [t["s"]]),
            mk("Mul", [x, t["s"]], [t["xs"]]),
            mk("Round", [t["xs"]], [t["q"]]),  # |x * s| < 127.5: the canonical Clip never acts
            mk("Div", [t["q"], t["s"]], [t["xq"]]),
            mk("MatMul", [t["xq"], t["w"]], [t["mm"]]),
            mk("Add", [t["mm"], bias], list(node.output)),
        ]
        arrays = {
            t["w"]: np.ascontiguousarray(w_t),
            t["axes"]: np.array([-1], np.int64),
            t["eps"]: np.array(EPS, np.float32),
            t["c127"]: np.array(127.0, np.float32),
        }
        return nodes, arrays

    return _rewrite(onnx_bytes, rewrite)


FOLDABLE = ("Reshape", "Expand", "Concat")


def fold_constant_inputs(onnx_bytes: bytes) -> bytes:
    """Every Reshape, Expand and Concat whose inputs are all initializers becomes the initializer it computes.
    The `matmulnbits-2bit` lowering writes MatMulNBits' B, scales and zero points as such expressions of the 2-bit
    weights (the file stays 2-bit); ONNX Runtime folds them when a session loads, but OpenVINO's MatMulNBits
    converter takes constants only. Models without MatMulNBits come back as they are, unparsed."""
    if b"MatMulNBits" not in onnx_bytes:
        return onnx_bytes
    onnx, numpy_helper, model = _load(onnx_bytes)
    inits = {i.name: i for i in model.graph.initializer}
    folded: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        return folded[name] if name in folded else numpy_helper.to_array(inits[name])

    keep = []
    for node in model.graph.node:  # in topological order: a fold that feeds another is computed first
        if node.domain or node.op_type not in FOLDABLE or not all(i in inits or i in folded for i in node.input):
            keep.append(node)
            continue
        a = [value(i) for i in node.input]
        if node.op_type == "Reshape":  # a 0 keeps that dimension (allowzero is not used by edgedf's graphs)
            out = a[0].reshape([a[0].shape[i] if d == 0 else int(d) for i, d in enumerate(a[1])])
        elif node.op_type == "Expand":
            out = np.broadcast_to(a[0], np.broadcast_shapes(a[0].shape, tuple(int(d) for d in a[1]))).copy()
        else:
            axis = next(at.i for at in node.attribute if at.name == "axis")
            out = np.concatenate(a, axis=axis)
        folded[node.output[0]] = out
    if not folded:
        return onnx_bytes
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {i for n in keep for i in n.input} | {o.name for o in model.graph.output}
    new = [i for i in model.graph.initializer if i.name in used]
    new += [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in folded.items() if k in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(new)
    return model.SerializeToString()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    fp16 = "--fp16" in argv
    argv = [a for a in argv if a != "--fp16"]
    if len(argv) != 2:
        print("usage: python -m edgedf.runtime.ternary BUNDLE_OR_ONNX OUT.onnx [--fp16]", file=sys.stderr)
        print("  --fp16: fp16 tensors, fp32 I/O (for TensorRT 11, which has no fp16 builder flag)", file=sys.stderr)
        return 2
    src, out = Path(argv[0]), Path(argv[1])
    try:
        if src.is_dir():
            from .bundle import load_bundle

            src = load_bundle(src).entry
        from .fsutil import atomic_write_bytes

        model = expand_packed_ternary(src.read_bytes())
        if fp16:
            from .backends.tensorrt import to_fp16

            model = to_fp16(model)
        atomic_write_bytes(out, model)
    except (EdgedfError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
