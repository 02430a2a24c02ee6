import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_helpers import tiny_model
from onnx import numpy_helper

from edgedf.export.calib import CropSource
from edgedf.export.lowering import LOWERINGS, lower, ternary_nodes
from edgedf.export.onnx_export import export_onnx
from edgedf.export.ptq import ternary_act_amax
from edgedf.export.ternary_op import DOMAIN
from edgedf.runtime.backends import ov_native
from edgedf.runtime.spec import FaceCropSpec
from edgedf.runtime.ternary import expand_packed_ternary, fold_constant_inputs

# Ops TensorRT 10's ONNX parser supports that these graphs can contain (onnx-tensorrt operators.md).
TENSORRT_OPS = {
    "Abs",
    "Add",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "DequantizeLinear",
    "Div",
    "Equal",
    "Erf",
    "Expand",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "Identity",
    "LayerNormalization",
    "MatMul",
    "Max",
    "Min",
    "Mul",
    "Neg",
    "Pow",
    "QuantizeLinear",
    "Range",
    "Reciprocal",
    "ReduceMax",
    "ReduceMean",
    "Relu",
    "Reshape",
    "Round",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Where",
}


@pytest.fixture(scope="module")
def canonical():
    model = tiny_model("bit", seed=3)
    return model, export_onnx(model, spec=FaceCropSpec(input_size=32))


def run(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def scales_for(proto):
    source = CropSource("random", [], FaceCropSpec(input_size=32))
    return {k: v / 127 for k, v in ternary_act_amax(proto, source, 64).items()}


# Per-token lowerings keep BitNet's arithmetic: logits agree with the canonical reference to rounding;
# int8-qdq (static per-tensor activation scales, TensorRT) and int8-dynamic (per-tensor dynamic) approximate it.
TOLERANCE = {"int8-exact": 0.02, "matmulnbits-2bit": 0.02, "int8-dynamic": 0.1, "int8-qdq": 0.1}


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_lowering_parity_against_canonical(canonical, lowering):
    _, proto = canonical
    lowered = lower(proto, lowering, scales_for(proto) if lowering == "int8-qdq" else None)
    onnx.checker.check_model(lowered)
    assert not ternary_nodes(lowered)
    x = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
    ref, y = run(proto, x), run(lowered, x)
    rel = np.abs(y - ref).max() / np.abs(ref).max()
    assert rel <= TOLERANCE[lowering], rel
    assert (np.argmax(y, 1) == np.argmax(ref, 1)).mean() >= 0.95
    # weights stay 2-bit on disk: no initializer holds a layer's N*K weights at 8 or 32 bits
    packed = {i.name: i for i in proto.graph.initializer}
    sizes = {int(packed[n.input[1]].dims[0] * packed[n.input[1]].dims[1] * 4) for n in ternary_nodes(proto)}
    for init in lowered.graph.initializer:
        numel = int(np.prod(init.dims)) if init.dims else 1
        assert not (numel in sizes and init.data_type != onnx.TensorProto.UINT8), init.name
    # nor any per-block scales written out (MatMulNBits' are an Expand of the one scale): the lowered file's
    # constants are the canonical's plus a few shapes and scalars per node
    extra = _init_bytes(lowered) - _init_bytes(proto)
    assert extra <= 96 * len(ternary_nodes(proto)), extra
    assert ternary_nodes(proto), "the input model must be left untouched"


def test_the_parity_tests_see_a_dropped_bias_or_norm_weight(canonical):
    """The test models carry random biases and norm weights (train.smoke.perturb): a lowering that dropped any one
    of them (a bias read as zeros, a norm weight as ones) would move the outputs by more than the exact lowerings'
    parity tolerance above (measured: 7 % to 96 % of the largest logit)."""
    _, proto = canonical
    x = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
    ref = run(proto, x)
    names = [n.input[3] for n in ternary_nodes(proto)]
    names += [i.name for i in proto.graph.initializer if i.name.endswith("norm.weight")]
    assert len(names) == 17  # 8 biases, the 8 BitLinear norms and the final norm of a 2-block model
    for name in names:
        broken = copy.deepcopy(proto)
        init = next(i for i in broken.graph.initializer if i.name == name)
        lost = np.full_like(numpy_helper.to_array(init), 1.0 if name.endswith("norm.weight") else 0.0)
        init.CopyFrom(numpy_helper.from_array(lost, name))
        rel = np.abs(run(broken, x) - ref).max() / np.abs(ref).max()
        assert rel > TOLERANCE["int8-exact"], (name, rel)


def _init_bytes(model) -> int:
    return sum(len(i.raw_data) or i.ByteSize() for i in model.graph.initializer)


@pytest.mark.parametrize("dim", [32, 48])
def test_openvino_gets_matmulnbits_weights_as_constants(canonical, dim):
    """OpenVINO's MatMulNBits converter takes constant B, scales and zero points only: fold_constant_inputs
    computes the lowering's weight expressions into initializers, and the model computes the same. dim 48: every
    K (48, 192) leaves a last block to pad (blocks of 64 and 128)."""
    proto = canonical[1] if dim == 32 else export_onnx(tiny_model("bit", seed=4, dim=dim), spec=FaceCropSpec(32))
    lowered = lower(proto, "matmulnbits-2bit")
    folded = onnx.load_from_string(fold_constant_inputs(lowered.SerializeToString()))
    inits = {i.name for i in folded.graph.initializer}
    mnb = [n for n in folded.graph.node if n.op_type == "MatMulNBits"]
    assert mnb and all(all(i in inits for i in n.input[1:4]) for n in mnb)
    assert not [n for n in folded.graph.node if n.op_type in ("Reshape", "Expand", "Concat") and set(n.input) <= inits]
    x = np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32)
    assert np.array_equal(run(folded, x), run(lowered, x))
    assert np.abs(run(lowered, x) - run(proto, x)).max() <= TOLERANCE["matmulnbits-2bit"] * np.abs(run(proto, x)).max()
    from edgedf.runtime.backends.openvino import OpenVinoSession

    y, ref = OpenVinoSession(folded.SerializeToString()).run({"input": x})[0], run(lowered, x)
    assert np.abs(y - ref).max() <= TOLERANCE["matmulnbits-2bit"] * np.abs(ref).max()


def test_int8_exact_is_bitnet_integer_arithmetic(canonical):
    """MatMulInteger over per-token int8 codes and ternary weights is exact: it matches the torch
    BitLinear model as closely as the canonical float reference does."""
    model, proto = canonical
    x = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    y_exact, y_canon = run(lower(proto, "int8-exact"), x.numpy()), run(proto, x.numpy())
    assert np.abs(y_exact - ref).max() <= 2 * np.abs(y_canon - ref).max() + 1e-4


def test_int8_qdq_needs_scales(canonical):
    from edgedf.runtime.errors import EdgedfError

    with pytest.raises(EdgedfError, match="calibrated activation scale"):
        lower(canonical[1], "int8-qdq")


def test_unknown_lowering(canonical):
    from edgedf.runtime.errors import EdgedfError

    with pytest.raises(EdgedfError, match="unknown lowering"):
        lower(canonical[1], "int4-magic")


def test_tensorrt_expansion_leaves_only_tensorrt_ops(canonical):
    _, proto = canonical
    lowered = lower(proto, "int8-qdq", scales_for(proto))
    assert any(n.domain == DOMAIN and n.op_type == "UnpackTernary" for n in lowered.graph.node)
    expanded = onnx.load_from_string(expand_packed_ternary(lowered.SerializeToString()))
    onnx.checker.check_model(expanded, full_check=True)
    ops = {n.op_type for n in expanded.graph.node}
    assert ops <= TENSORRT_OPS, ops - TENSORRT_OPS
    assert not expanded.functions and all(n.domain == "" for n in expanded.graph.node)
    # the int8 weights feed DequantizeLinear directly, as TensorRT's explicit quantisation wants
    inits = {i.name: i for i in expanded.graph.initializer}
    dq_w = [n for n in expanded.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(dq_w) == 4 * 2 and all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in dq_w)
    x = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(run(expanded, x), run(lowered, x), atol=1e-5)


@pytest.mark.parametrize("lowering, codes_of", [("int8-exact", "QuantizeLinear"), ("matmulnbits-2bit", "Round")])
def test_exact_lowerings_compute_pytorchs_int8_codes_bit_for_bit(canonical, lowering, codes_of):
    """Per layer, from the same layer input, the lowered graph's int8 activation codes are PyTorch's BitLinear
    codes: identical, not within a tolerance (about 280k codes: 64 images x 17 tokens x 32 features x 8 layers).
    (Fed the whole network, later layers' inputs differ from PyTorch's in the last float bits, attention and
    GEMMs summing in another order, and a code on a .5 boundary may then go either way: that is no lowering's.)"""
    from edgedf.train.bitlinear import activation_quant_int8

    _, proto = canonical
    x = CropSource("random", [], FaceCropSpec(input_size=32)).crops(64)
    lowered = lower(proto, lowering)
    inputs = [n.input[0] for n in ternary_nodes(proto)]
    codes = [n.output[0] for n in lowered.graph.node if n.op_type == codes_of]
    assert len(codes) == len(inputs) == 8
    for name in inputs + codes:
        lowered.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(inputs + codes, {"input": x})
    for layer_in, got in zip(outs[:8], outs[8:], strict=True):
        want = activation_quant_int8(torch.from_numpy(layer_in))[0].numpy().astype(np.int16)
        got = got.astype(np.int16) - (128 if got.dtype == np.uint8 else 0)
        assert np.array_equal(got, want), int((got != want).sum())


def test_int8_exact_after_onnx_runtimes_optimiser(canonical, tmp_path):
    """What ONNX Runtime runs: each BitLinear's RMSNorm fused into one SimplifiedLayerNormalization, its codes
    made by one QuantizeLinear, its GEMM and scaling by g in one MatMulIntegerToFloat; no unfused leftovers."""
    _, proto = canonical
    lowered = lower(proto, "int8-exact")
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(lowered.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    n_linear = len(ternary_nodes(proto))
    assert ops.count("SimplifiedLayerNormalization") == n_linear
    assert ops.count("QuantizeLinear") == ops.count("MatMulIntegerToFloat") == n_linear
    assert not {"MatMulInteger", "Cast", "Round", "Clip", "Pow", "Sqrt"} & set(ops), sorted(set(ops))


def test_native_after_openvinos_optimiser(canonical, native_kernel):
    """What OpenVINO runs for a `native` bundle: the BitLinears, their RMSNorms included, as 3 edgedf nodes per
    block (qkv in the attention's layout; proj with its residual; fc1 -> GELU -> fc2 with its residual), and on
    AVX-512 CPUs the attention as a fourth (no MatMul or Softmax left); no norm of OpenVINO's own (RMS, or its
    Power / Sqrt / Divide pieces) left in the compiled model (the head's LayerNorm is OpenVINO's MVN)."""
    import openvino as ov

    _, proto = canonical
    core = ov.Core()
    core.add_extension(str(native_kernel))
    model = core.read_model(model=proto.SerializeToString(), weights=ov.Tensor(np.empty(0, np.uint8)))
    n_linear = len(ternary_nodes(proto))
    fused = [op for op in model.get_ops() if op.get_type_name() == "TernaryLinear"]
    blocks = n_linear // 4
    assert sorted(len(op.inputs()) for op in fused) == [6] * blocks + [7] * blocks + [12] * blocks
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    kinds = [op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()]
    avx512 = ov_native.cpu_path(native_kernel) in ("avx512-vnni", "amx-int8")
    attention = [op for op in model.get_ops() if op.get_type_name() == "Attention"]
    assert len(attention) == blocks * avx512 and all(op.get_attributes()["tokens_major"] for op in attention)
    # the custom ops: OpenVINO runs them through their evaluate()
    assert kinds.count("Reference") == (4 if avx512 else 3) * blocks
    if avx512:
        assert not {"MatMul", "Softmax"} & set(kinds), sorted(set(kinds))
    assert not {"RMS", "Power", "PowerStatic", "Sqrt", "Divide"} & set(kinds), sorted(set(kinds))
