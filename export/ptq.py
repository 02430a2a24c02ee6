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
    with redirect_stdout(io.StringIO()):
        q = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items))
    ov.save_model(q, str(out_xml), compress_to_fp16=False)
    return {"tool": f"nncf.quantize {nncf.__version__}", "model_type": "TRANSFORMER", "crops": len(items)}


def ternary_act_amax(
    canonical: onnx.ModelProto, source: CropSource, n: int, percentile: float = 99.99
) -> dict[str, float]:
    """Static per-tensor ranges of every TernaryLinear input (for TensorRT's Q/DQ), from calibration crops:
    the `percentile` of |x| over all tokens and crops, so one outlier token does not flatten the rest."""
    import onnxruntime as ort

    from .lowering import ternary_nodes

    names = sorted({nd.input[0] for nd in ternary_nodes(canonical)})
    m = onnx.ModelProto()
    m.CopyFrom(canonical)
    for name in names:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    samples: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for b in source.batches(n, 16):
        res = dict(zip(outs, sess.run(None, {sess.get_inputs()[0].name: b}), strict=True))
        for k in names:
            a = np.abs(res[k]).ravel()
            samples[k].append(a if a.size <= 200_000 else np.random.default_rng(0).choice(a, 200_000))
    return {k: float(np.percentile(np.concatenate(v), percentile)) for k, v in samples.items()}
