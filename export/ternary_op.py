"""The canonical ternary op, `edgedf::TernaryLinear(x, w_packed, w_scale, bias) -> y`.

    x        float [..., K]     the already-normalised input (BitLinear's norm precedes the node as
                                standard ops, so every backend keeps its own fused LayerNorm/RMSNorm)
    w_packed uint8 [N, K/4]     ternary codes c in {-1,0,1} stored as c+1, four per byte, element 4j+i in
                                bits 2i..2i+1 of byte j (train.bitlinear.pack_ternary)
    w_scale  float []           per-tensor absmean scale g
    bias     float [N]          zeros when the layer has none
    y = (Clip(Round(x * s), -128, 127) / s) @ (c * g)^T + bias,   s = 127 / max(max|x| over K, 1e-5)

It is exported from torch as a custom op (torch.library) with a registered ONNX schema, so the node
stays one node; the FunctionProto added to the model gives its semantics in standard ops (opset 18:
BitNet's integer arithmetic, exact int32 sums of the int8 codes), so ONNX Runtime runs the canonical file
as it is. `edgedf::UnpackTernary` (packed -> int8 codes [K, N], transposed for MatMul) is the companion op
the function and the lowering passes use to keep weights 2-bit on disk while the backend computes in int8.
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
from onnx import TensorProto, defs
from onnx import helper as oh
from onnxscript import FLOAT, INT8, UINT8
from onnxscript import opset18 as op

from edgedf.train.bitlinear import EPS, activation_quant, unpack_ternary

DOMAIN = "edgedf"
VERSION = 1
OPSET = 18


def _register_schemas() -> None:
    F = defs.OpSchema.FormalParameter
    if not defs.has("TernaryLinear", DOMAIN):
        defs.register_schema(
            defs.OpSchema(
                "TernaryLinear",
                DOMAIN,
                VERSION,
                inputs=[F("x", "T"), F("w_packed", "tensor(uint8)"), F("w_scale", "T"), F("bias", "T")],
                outputs=[F("y", "T")],
                type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float types")],
            )
        )
    if not defs.has("UnpackTernary", DOMAIN):
        defs.register_schema(
            defs.OpSchema(
                "UnpackTernary",
                DOMAIN,
                VERSION,
                inputs=[F("w_packed", "tensor(uint8)")],
                outputs=[F("codes_t", "tensor(int8)")],
            )
        )


_register_schemas()
edgedf_opset = onnxscript.values.Opset(DOMAIN, VERSION)


# --- reference semantics as ONNX functions (standard ops only) ---


@onnxscript.script(edgedf_opset, default_opset=op)
def UnpackTernary(w_packed: UINT8) -> INT8:
    shifts = op.Constant(value=oh.make_tensor("shifts", TensorProto.UINT8, [4], [0, 2, 4, 6]))
    three = op.Constant(value=oh.make_tensor("three", TensorProto.UINT8, [], [3]))
    u = op.BitwiseAnd(
        op.BitShift(op.Unsqueeze(w_packed, op.Constant(value_ints=[-1])), shifts, direction="RIGHT"), three
    )
    rows = op.Shape(w_packed, start=0, end=1)
    codes = op.Sub(
        op.Cast(op.Reshape(u, op.Concat(rows, op.Constant(value_ints=[-1]), axis=0)), to=3),
        op.Constant(value=oh.make_tensor("one", TensorProto.INT8, [], [1])),
    )
    return op.Transpose(codes, perm=[1, 0])


@onnxscript.script(edgedf_opset, default_opset=op)
def TernaryLinear(x: FLOAT, w_packed: UINT8, w_scale: FLOAT, bias: FLOAT) -> FLOAT:
    # BitNet's integer arithmetic, as export/lowering.py's int8-exact writes it: the codes + 128 as uint8 in one
    # QuantizeLinear (Round half to even, saturating: the Clip), an exact int32 MatMulInteger with the ternary codes,
    # then * g, / s per token, + bias. ONNX Runtime fuses MatMulInteger -> Cast -> Mul(Mul(a, g)) into its
    # MatMulIntegerToFloat, so where edgedf's own op is not registered the canonical file runs at int8 speed. The
    # fusion looks for that inner Mul, which constant folding would take away with a = 1 as a constant: a is 1
    # computed from x's size at run time.
    amax = op.Max(op.ReduceMax(op.Abs(x), op.Constant(value_ints=[-1]), keepdims=1), op.Constant(value_float=EPS))
    s = op.Div(op.Constant(value_float=127.0), amax)
    zero_point = op.Constant(value=oh.make_tensor("zp", TensorProto.UINT8, [], [128]))
    q = op.QuantizeLinear(op.Mul(x, s), op.Constant(value_float=1.0), zero_point)
    acc = op.Cast(op.MatMulInteger(q, UnpackTernary(w_packed), zero_point), to=1)
    one = op.Cast(op.Greater(op.Size(x), op.Constant(value_int=-1)), to=1)
    return op.Add(op.Div(op.Mul(acc, op.Mul(one, w_scale)), s), bias)


def function_protos() -> list[onnx.FunctionProto]:
    return [UnpackTernary.to_function_proto(), TernaryLinear.to_function_proto()]


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the FunctionProtos of the edgedf ops the graph uses, and the opset imports they need."""
    used = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
    if not used:
        return model
    if "TernaryLinear" in used:
        used.add("UnpackTernary")
    have = {(f.domain, f.name) for f in model.functions}
    for fp in function_protos():
        if fp.name in used and (fp.domain, fp.name) not in have:
            model.functions.append(fp)
    imports = {o.domain: o for o in model.opset_import}
    if DOMAIN not in imports:
        model.opset_import.append(oh.make_opsetid(DOMAIN, VERSION))
    if "" in imports and imports[""].version < OPSET:
        imports[""].version = OPSET
    return model


# --- the torch side: a custom op that exports as one edgedf::TernaryLinear node ---


@torch.library.custom_op("edgedf::ternary_linear", mutates_args=())
def ternary_linear(x: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    w = unpack_ternary(w_packed, w_packed.shape[-1] * 4).to(x.dtype) * w_scale.to(x.dtype)
    return torch.nn.functional.linear(activation_quant(x), w, bias.to(x.dtype))


@ternary_linear.register_fake
def _(x, w_packed, w_scale, bias):
    return x.new_empty(*x.shape[:-1], w_packed.shape[0])


def _translate_ternary_linear(x, w_packed, w_scale, bias):
    return edgedf_opset.TernaryLinear(x, w_packed, w_scale, bias)


TRANSLATIONS = {torch.ops.edgedf.ternary_linear.default: _translate_ternary_linear}
