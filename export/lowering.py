"""Lowering passes: rewrite the canonical `edgedf::TernaryLinear` node into what each backend runs fastest.

Each pass is a rule in the spirit of onnxscript's rewriter: a pattern (one TernaryLinear node with
constant packed weights) and a replacement (a short list of standard or com.microsoft nodes). The
weights stay 2-bit on disk in every form: where a backend computes in int8, the replacement reads them
through `edgedf::UnpackTernary`, which ONNX Runtime constant-folds at session start and which the
TensorRT loader expands to an int8 initializer before the engine build (runtime/ternary.py).

    int8-exact        ONNX Runtime: per-token int8 codes (uint8 + 128, one QuantizeLinear) x ternary int8
                      weights in com.microsoft::MatMulIntegerToFloat; int32 accumulation is exact: BitNet's
                      integer arithmetic.
    int8-dynamic      ONNX Runtime: DynamicQuantizeMatMul (per-tensor dynamic uint8 activations).
    matmulnbits-2bit  ONNX Runtime ARM64 / OpenVINO: com.microsoft::MatMulNBits bits=2 on the packed codes
                      (zero point 1, one scale g per block); OpenVINO reads it as u2-compressed weights.
    int8-qdq          TensorRT: static per-tensor activation Q/DQ (scales calibrated on data; TensorRT has
                      no per-token scales) and int8 DequantizeLinear weights holding the exact codes.
    native            OpenVINO and ONNX Runtime: no rewrite; the canonical node runs in edgedf's own kernel
                      (runtime/backends/ov_native.py, ort_native.py: exact per-token codes, a ternary int8 GEMM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper as oh
from onnx import numpy_helper

from edgedf.runtime.errors import EdgedfError

from .ternary_op import DOMAIN, EPS, attach_functions

LOWERINGS = ("int8-exact", "int8-dynamic", "matmulnbits-2bit", "int8-qdq")  # the rewrites
NATIVE = "native"  # no rewrite: OpenVINO or ONNX Runtime runs the canonical node in edgedf's kernel
CHOICES = (*LOWERINGS, NATIVE)


@dataclass
class Context:
    model: onnx.ModelProto
    act_scales: dict[str, float] = field(default_factory=dict)  # TernaryLinear input name -> static scale
    new_inits: list[onnx.TensorProto] = field(default_factory=list)
    _n: int = 0

    def __post_init__(self) -> None:
        self.inits = {i.name: i for i in self.model.graph.initializer}

    def const(self, name: str) -> np.ndarray:
        if name not in self.inits:
            raise EdgedfError(f"lowering needs {name!r} to be a constant initializer")
        return numpy_helper.to_array(self.inits[name])

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}__l{self._n}"

    def add(self, array: np.ndarray, base: str) -> str:
        n = self.name(base)
        self.new_inits.append(numpy_helper.from_array(np.asarray(array), n))
        return n

    def scalar(self, value, dtype, base: str) -> str:
        return self.add(np.asarray(value, dtype=dtype), base)


Rule = Callable[[onnx.NodeProto, Context], list[onnx.NodeProto]]


def _token_scale_nodes(x: str, ctx: Context, base: str) -> tuple[list[onnx.NodeProto], str, str]:
    """Per-token absmax scale: returns nodes, s = 127 / max(absmax, eps) and x * s."""
    n = ctx.name
    abs_out, amax, amax_c, s, xs = (n(f"{base}_{t}") for t in ("abs", "amax", "amaxc", "s", "xs"))
    axes = ctx.add(np.array([-1], np.int64), f"{base}_axes")
    nodes = [
        oh.make_node("Abs", [x], [abs_out], name=n(base)),
        oh.make_node("ReduceMax", [abs_out, axes], [amax], keepdims=1, name=n(base)),
        oh.make_node("Max", [amax, ctx.scalar(EPS, np.float32, "eps")], [amax_c], name=n(base)),
        oh.make_node("Div", [ctx.scalar(127.0, np.float32, "c127"), amax_c], [s], name=n(base)),
        oh.make_node("Mul", [x, s], [xs], name=n(base)),
    ]
    return nodes, s, xs


def _act_quant_nodes(x: str, ctx: Context, base: str) -> tuple[list[onnx.NodeProto], str, str]:
    """Per-token absmax: returns nodes, the rounded codes q (float, in [-127, 127]) and the scale s.

    No Clip to [-128, 127] as the canonical op has: |x| <= absmax, so |x * s| <= 127 * (1 + 2^-23)^2 < 127.5
    and Round already lands in [-127, 127]; the Clip never acts."""
    nodes, s, xs = _token_scale_nodes(x, ctx, base)
    q = ctx.name(f"{base}_q")
    nodes.append(oh.make_node("Round", [xs], [q], name=ctx.name(base)))
    return nodes, q, s


def _node_parts(node: onnx.NodeProto, ctx: Context):
    x, w_packed, w_scale, bias = node.input
    packed = ctx.const(w_packed)
    n_out, k = packed.shape[0], packed.shape[1] * 4
    return x, w_packed, w_scale, bias, n_out, k


def lower_int8_exact(node: onnx.NodeProto, ctx: Context) -> list[onnx.NodeProto]:
    """uint8 codes in one QuantizeLinear (scale 1, zero point 128: Round half to even, + 128, saturate; x * s
    is already the scaled value, so this is the canonical Round exactly), then ONNX Runtime's
    MatMulIntegerToFloat (the int32 GEMM and its scaling by g in one kernel), / s per token, + bias."""
    x, w_packed, w_scale, bias, _, _ = _node_parts(node, ctx)
    base, n = node.name or "tl", ctx.name
    nodes, s, xs = _token_scale_nodes(x, ctx, base)
    q_u8, w_t, y_g, y0 = (n(f"{base}_{t}") for t in ("qu8", "wt", "yg", "y0"))
    one, azp = ctx.scalar(1.0, np.float32, "one"), ctx.scalar(128, np.uint8, "azp")
    nodes += [
        oh.make_node("QuantizeLinear", [xs, one, azp], [q_u8], name=n(base)),
        oh.make_node("UnpackTernary", [w_packed], [w_t], domain=DOMAIN, name=n(base)),
        # its a_scale is one scalar (1 here): the per-token 1/s comes after, in one Div
        oh.make_node(
            "MatMulIntegerToFloat", [q_u8, w_t, one, w_scale, azp], [y_g], domain="com.microsoft", name=n(base)
        ),
        oh.make_node("Div", [y_g, s], [y0], name=n(base)),
        oh.make_node("Add", [y0, bias], [node.output[0]], name=n(base)),
    ]
    return nodes


def lower_int8_dynamic(node: onnx.NodeProto, ctx: Context) -> list[onnx.NodeProto]:
    x, w_packed, w_scale, bias, _, _ = _node_parts(node, ctx)
    base, n = node.name or "tl", ctx.name
    nodes, q, s = _act_quant_nodes(x, ctx, base)
    xq, w_t = n(f"{base}_xq"), n(f"{base}_wt")
    nodes += [
        oh.make_node("Div", [q, s], [xq], name=n(base)),  # BitNet's per-token fake-quantised input
        oh.make_node("UnpackTernary", [w_packed], [w_t], domain=DOMAIN, name=n(base)),
        oh.make_node(
            "DynamicQuantizeMatMul",
            [xq, w_t, w_scale, ctx.scalar(0, np.int8, "bzp"), bias],
            [node.output[0]],
            domain="com.microsoft",
            name=n(base),
        ),
    ]
    return nodes


def _block_size(k: int) -> int:
    """One fp32 scale per block costs 4 bytes per bs/4 bytes of codes: large blocks keep the file 2-bit."""
    return 128 if k >= 128 else max(16, 1 << (k - 1).bit_length())


def lower_matmulnbits(node: onnx.NodeProto, ctx: Context, accuracy_level: int = 4) -> list[onnx.NodeProto]:
    """MatMulNBits (bits 2) on the packed codes. Its inputs are written as constant expressions of the canonical
    initializers (B a Reshape of w_packed, one scale per block an Expand of w_scale, the zero points an Expand of
    one byte): the file stays as small as the canonical one (an fp32 scale per 128 weights would add an eighth),
    and the runtime's constant folding makes them the initializers MatMulNBits packs when a session loads."""
    x, w_packed, w_scale, bias, n_out, k = _node_parts(node, ctx)
    base, n = node.name or "tl", ctx.name
    nodes, q, s = _act_quant_nodes(x, ctx, base)
    bs = _block_size(k)
    blocks = -(-k // bs)
    # pack_ternary's layout (c+1, element i of a group in bits 2i) is MatMulNBits' 2-bit layout; a last
    # partial block is padded with code 0 (bytes 0b01010101), which is also every zero point (code 1 - 1)
    ones = ctx.scalar(0b01010101, np.uint8, f"{base}_code0")
    packed, pad = w_packed, blocks * bs // 4 - k // 4
    if pad:
        fill, packed = n(f"{base}_pad"), n(f"{base}_padded")
        nodes += [
            oh.make_node(
                "Expand", [ones, ctx.add(np.array([n_out, pad], np.int64), f"{base}_padshape")], [fill], name=n(base)
            ),
            oh.make_node("Concat", [w_packed, fill], [packed], axis=1, name=n(base)),
        ]
    b, scales, zp = n(f"{base}_B"), n(f"{base}_scales"), n(f"{base}_zp")
    nodes += [
        oh.make_node("Reshape", [packed, ctx.add(np.array([n_out, blocks, bs // 4], np.int64), f"{base}_bshape")],
                     [b], name=n(base)),
        oh.make_node("Expand", [w_scale, ctx.add(np.array([n_out * blocks], np.int64), f"{base}_sshape")], [scales],
                     name=n(base)),
        oh.make_node("Expand", [ones, ctx.add(np.array([n_out * ((blocks * 2 + 7) // 8)], np.int64), f"{base}_zs")],
                     [zp], name=n(base)),
    ]  # fmt: skip
    xq, y0 = n(f"{base}_xq"), n(f"{base}_y0")
    nodes += [
        oh.make_node("Div", [q, s], [xq], name=n(base)),
        oh.make_node(
            "MatMulNBits",
            [xq, b, scales, zp],
            [y0],
            domain="com.microsoft",
            K=k,
            N=n_out,
            bits=2,
            block_size=bs,
            accuracy_level=accuracy_level,
            name=n(base),
        ),
        oh.make_node("Add", [y0, bias], [node.output[0]], name=n(base)),
    ]
    return nodes


def lower_int8_qdq(node: onnx.NodeProto, ctx: Context) -> list[onnx.NodeProto]:
    x, w_packed, w_scale, bias, _, _ = _node_parts(node, ctx)
    if x not in ctx.act_scales:
        raise EdgedfError(f"int8-qdq lowering needs a calibrated activation scale for {x}")
    base, n = node.name or "tl", ctx.name
    sx = ctx.scalar(ctx.act_scales[x], np.float32, f"{base}_sx")
    zp8 = ctx.scalar(0, np.int8, "zp8")
    xq, xdq, w_t, w_dq, y0 = (n(f"{base}_{t}") for t in ("xq", "xdq", "wt", "wdq", "y0"))
    return [
        oh.make_node("QuantizeLinear", [x, sx, zp8], [xq], name=n(base)),
        oh.make_node("DequantizeLinear", [xq, sx, zp8], [xdq], name=n(base)),
        oh.make_node("UnpackTernary", [w_packed], [w_t], domain=DOMAIN, name=n(base)),
        oh.make_node("DequantizeLinear", [w_t, w_scale, zp8], [w_dq], name=n(base)),
        oh.make_node("MatMul", [xdq, w_dq], [y0], name=n(base)),
        oh.make_node("Add", [y0, bias], [node.output[0]], name=n(base)),
    ]


# What a lowering computes differently from the canonical op (written to the manifest's deviations).
DEVIATIONS = {
    "int8-dynamic": (
        "DynamicQuantizeMatMul re-quantises the (already per-token int8) activations with one dynamic uint8 "
        "scale per tensor: not BitNet's per-token codes"
    ),
    "matmulnbits-2bit": (
        "MatMulNBits accuracy_level 4 re-quantises the (already per-token int8) activations to int8 per block "
        "of {bs} inputs before its integer GEMM: codes match BitNet's only where a block holds its token's max"
    ),
}


def deviation(lowering: str, ks: Iterable[int] = (128,)) -> str | None:
    """The deviation text of `lowering` for linears of these input sizes (their block sizes), or None."""
    text = DEVIATIONS.get(lowering)
    return text.format(bs=" or ".join(str(b) for b in sorted({_block_size(k) for k in ks}))) if text else None


RULES: dict[str, Rule] = {
    "int8-exact": lower_int8_exact,
    "int8-dynamic": lower_int8_dynamic,
    "matmulnbits-2bit": lower_matmulnbits,
    "int8-qdq": lower_int8_qdq,
}


def ternary_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [nd for nd in model.graph.node if nd.domain == DOMAIN and nd.op_type == "TernaryLinear"]


def lower(model: onnx.ModelProto, lowering: str, act_scales: dict[str, float] | None = None) -> onnx.ModelProto:
    """Apply one lowering rule to every TernaryLinear node; returns a new model (the input is untouched)."""
    if lowering not in RULES:
        raise EdgedfError(f"unknown lowering {lowering!r}; choose one of {', '.join(LOWERINGS)}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    ctx = Context(out, act_scales=dict(act_scales or {}))
    rule = RULES[lowering]
    new_nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if node.domain == DOMAIN and node.op_type == "TernaryLinear":
            new_nodes.extend(rule(node, ctx))
        else:
            new_nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    out.graph.initializer.extend(ctx.new_inits)
    prune_initializers(out)
    # functions: keep only those still referenced
    used = {nd.op_type for nd in out.graph.node if nd.domain == DOMAIN}
    keep_f = [f for f in out.functions if f.domain != DOMAIN or f.name in used]
    del out.functions[:]
    out.functions.extend(keep_f)
    if not used:
        keep_o = [o for o in out.opset_import if o.domain != DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(keep_o)
    if any(nd.domain == "com.microsoft" for nd in out.graph.node) and not any(
        o.domain == "com.microsoft" for o in out.opset_import
    ):
        out.opset_import.append(oh.make_opsetid("com.microsoft", 1))
    attach_functions(out)
    return out


def prune_initializers(model: onnx.ModelProto) -> None:
    """Drop initializers no node reads (e.g. packed weights a lowering re-laid out)."""
    used = {i for nd in model.graph.node for i in nd.input} | {o.name for o in model.graph.output}
    for nd in model.graph.node:  # subgraphs are not used by these models; keep it simple but safe
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in nd.attribute):
            return
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
