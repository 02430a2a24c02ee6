"""Post-training int8 quantisation of the full-precision model, with each backend's own tool.

- ONNX Runtime: `quantize_static`, QDQ format, calibrated on face crops. Only the MatMul/Gemm nodes with
  constant weights (the linear layers) are quantised: quantising every op type drifted a ViT's p(fake)
  by 0.10-0.12 on this CPU, linear-only by 0.01-0.02 (MEASUREMENTS.md).
- TensorRT: the same tool in TensorRT's dialect: symmetric int8 activations and per-channel symmetric int8
  weights (zero points 0), which TensorRT's explicit quantisation requires.
- OpenVINO: NNCF `quantize` with model_type TRANSFORMER on the OpenVINO model.
"""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import onnx

from edgedf.train.bitlinear import EPS

from .calib import CropSource


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and any(i in inits for i in n.input)]


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over calibration crops."""

    def __init__(self, source: CropSource, n: int, batch: int, input_name: str):
        self._it = (({input_name: b}) for b in source.batches(n, batch))

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # not needed by MinMax
        pass


def ort_quantize(
    fp32_onnx: Path, out: Path, source: CropSource, n: int, *, tensorrt: bool = False, input_name: str = "input"
) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_onnx))
    nodes = weight_matmuls(model)
    common = dict(
        calibration_data_reader=_Reader(source, n, 16, input_name),
        quant_format=QuantFormat.QDQ,
        nodes_to_quantize=nodes,
        calibrate_method=CalibrationMethod.MinMax,
    )
    if tensorrt:
        settings = dict(
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    else:
        settings = dict(
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False, reduce_range=True
        )
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs every node at INFO on the root logger
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            quantize_static(str(fp32_onnx), str(out), **common, **settings)
    finally:
        root.setLevel(level)
    return {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "method": "MinMax",
        "crops": n,
        "nodes_quantized": len(nodes),
        "settings": {k: (str(v) if not isinstance(v, (bool, dict)) else v) for k, v in settings.items()},
    }


def openvino_quantize(fp32_onnx: Path, out_xml: Path, source: CropSource, n: int) -> dict:
    import nncf
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = ov.convert_model(str(fp32_onnx))
    items = [b for b in source.batches(n, 1)]
    # half-range (7-bit) weights everywhere: x86 CPUs without VNNI sum u8 x s8 products pairwise in int16
    # (vpmaddubsw), which saturates with full-range weights (measured: 82 % agreement on an AVX2 Zen 3)
    advanced = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE)
    with redirect_stdout(io.StringIO()):
        q = nncf.quantize(
            model,
            nncf.Dataset(items),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(items),
            advanced_parameters=advanced,
        )
    ov.save_model(q, str(out_xml), compress_to_fp16=False)
    return {
        "tool": f"nncf.quantize {nncf.__version__}",
        "model_type": "TRANSFORMER",
        "overflow_fix": "enable",
        "crops": len(items),
    }


HALF_RANGE = (
    "int8 weights use half their range (7 bits) so that x86 CPUs without VNNI, whose int16 pair sums "
    "(vpmaddubsw) saturate with full-range weights, compute them exactly"
)


TERNARY_CALIBRATION = "per TernaryLinear input: the percentile of |x| (99 to 100) closest to per-token quantisation"


def ternary_act_amax(
    canonical: onnx.ModelProto, source: CropSource, n: int, max_tokens: int = 4096
) -> dict[str, float]:
    """Static per-tensor ranges of every TernaryLinear input (for the int8-qdq lowering), from calibration
    crops. The reference is BitNet's per-token absmax quantisation, so each input's range is the candidate
    (a percentile of |x|, or the max) whose static int8 quantisation of the calibration tokens comes
    closest (least squared error) to their per-token quantisation."""
    import onnxruntime as ort

    from .lowering import ternary_nodes

    names = sorted({nd.input[0] for nd in ternary_nodes(canonical)})
    m = onnx.ModelProto()
    m.CopyFrom(canonical)
    for name in names:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    tokens: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for b in source.batches(n, 16):
        res = dict(zip(outs, sess.run(None, {sess.get_inputs()[0].name: b}), strict=True))
        for k in names:
            tokens[k].append(res[k].reshape(-1, res[k].shape[-1]))
    rng = np.random.default_rng(0)
    amax = {}
    for k, parts in tokens.items():
        x = np.concatenate(parts)
        x = x[rng.choice(len(x), max_tokens, replace=False)] if len(x) > max_tokens else x
        amax[k] = best_static_amax(x)
    return amax


def per_token_quant(x: np.ndarray) -> np.ndarray:
    """BitNet's per-token absmax fake quantisation (train.bitlinear.activation_quant) in numpy."""
    s = np.float32(127.0) / np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(EPS))
    return np.clip(np.round(x * s), -128, 127) / s


def best_static_amax(tokens: np.ndarray, percentiles=(99.0, 99.9, 99.99, 99.999, 100.0)) -> float:
    """The per-tensor range whose static int8 quantisation best matches per-token quantisation of `tokens`."""
    ref = per_token_quant(tokens)
    a = np.abs(tokens).ravel()
    best, best_err = None, np.inf
    for c in np.percentile(a, percentiles):
        sx = max(float(c), 1e-6) / 127.0
        err = float(np.square(np.clip(np.round(tokens / sx), -128, 127) * sx - ref).mean())
        if err < best_err:
            best, best_err = float(c), err
    return best
