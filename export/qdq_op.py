"""QAT linears -> int8 Q/DQ ONNX that ONNX Runtime, OpenVINO and TensorRT all consume.

A QATLinear exports as: x -> QuantizeLinear(s_x, 0) -> DequantizeLinear -> MatMul(., DequantizeLinear(
W_int8^T [K, N], s_w[N], axis=1)) -> Add(bias): symmetric int8, per-tensor activations with the scale
learned in QAT, per-channel weights, exactly the fake quantisation the model was trained with.
"""

from __future__ import annotations

import torch
from onnx import TensorProto
from onnx import helper as oh
from onnxscript import opset18 as op
from torch import nn

from edgedf.train.qat import QMAX, QATLinear, weight_scales


@torch.library.custom_op("edgedf::qdq_linear", mutates_args=())
def qdq_linear(
    x: torch.Tensor, w_t_int8: torch.Tensor, w_scale: torch.Tensor, x_scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    xq = (x / x_scale).round().clamp(-QMAX - 1, QMAX) * x_scale
    w = w_t_int8.float() * w_scale[None, :]
    return xq @ w + bias


@qdq_linear.register_fake
def _(x, w_t_int8, w_scale, x_scale, bias):
    return x.new_empty(*x.shape[:-1], w_t_int8.shape[1])


def _translate(x, w_t_int8, w_scale, x_scale, bias):
    zero = op.Constant(value=oh.make_tensor("zp", TensorProto.INT8, [], [0]))
    xq = op.DequantizeLinear(op.QuantizeLinear(x, x_scale, zero), x_scale, zero)
    zeros = op.Constant(value=oh.make_tensor("wzp", TensorProto.INT8, [1], [0]))
    w = op.DequantizeLinear(w_t_int8, w_scale, op.Expand(zeros, op.Shape(w_scale)), axis=1)
    return op.Add(op.MatMul(xq, w), bias)


TRANSLATIONS = {torch.ops.edgedf.qdq_linear.default: _translate}


class ExportQDQLinear(nn.Module):
    def __init__(self, q: QATLinear):
        super().__init__()
        s_w = weight_scales(q.weight)
        w_int8 = (q.weight.detach() / s_w[:, None]).round().clamp(-QMAX, QMAX).to(torch.int8)
        self.register_buffer("w_t_int8", w_int8.t().contiguous())
        self.register_buffer("w_scale", s_w)
        self.register_buffer("x_scale", q.act_scale.detach().float().reshape(()))
        self.register_buffer("bias", q.bias.detach() if q.bias is not None else torch.zeros(q.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.edgedf.qdq_linear(x, self.w_t_int8, self.w_scale, self.x_scale, self.bias)
