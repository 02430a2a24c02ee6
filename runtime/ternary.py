"""Load-time expansion of 2-bit ternary weights for backends that cannot unpack bits (TensorRT).

A bundle keeps ternary weights 2-bit on disk; a graph reads them through `edgedf::UnpackTernary`. Here
every UnpackTernary node fed by a constant is replaced by the int8 initializer it computes, leaving
only standard ops. numpy + onnx only (no torch): this runs on the device.

    python -m edgedf.runtime.ternary BUNDLE_OR_ONNX OUT.onnx    # e.g. before trtexec
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .errors import EdgedfError

DOMAIN = "edgedf"


def unpack_ternary_np(packed: np.ndarray, k: int | None = None) -> np.ndarray:
    """uint8 [N, ceil(K/4)] -> int8 codes [N, K] (inverse of train.bitlinear.pack_ternary)."""
    u = (packed[..., None] >> np.array([0, 2, 4, 6], np.uint8)) & 3
    codes = u.reshape(*packed.shape[:-1], -1).astype(np.int8) - 1
    return codes if k is None else codes[..., :k]


def expand_packed_ternary(onnx_bytes: bytes) -> bytes:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise EdgedfError("expanding ternary weights needs the onnx package: pip install onnx") from None
    model = onnx.load_from_string(onnx_bytes)
    inits = {i.name: i for i in model.graph.initializer}
    keep_nodes, new_inits = [], []
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == "UnpackTernary":
            src = inits.get(node.input[0])
            if src is None:
                raise EdgedfError(f"UnpackTernary {node.name} is not fed by a constant; cannot expand")
            codes_t = np.ascontiguousarray(unpack_ternary_np(numpy_helper.to_array(src)).T)
            new_inits.append(numpy_helper.from_array(codes_t, node.output[0]))
        else:
            if node.domain == DOMAIN:
                raise EdgedfError(f"{node.op_type} nodes must be lowered before a TensorRT build")
            keep_nodes.append(node)
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
