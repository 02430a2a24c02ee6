import copy

import pytest
import torch
import torch.nn.functional as F

from edgedf.train.bitlinear import (
    EPS,
    BitLinear,
    RMSNorm,
    TernaryLinear,
    activation_quant,
    activation_quant_int8,
    pack_ternary,
    ternary_codes,
    to_inference,
    unpack_ternary,
    weight_quant,
)


def ref_activation_quant(x: torch.Tensor) -> torch.Tensor:
    """The BitNet b1.58 formula, written out in float64."""
    xd = x.double()
    s = 127.0 / xd.abs().max(dim=-1, keepdim=True).values.clamp(min=EPS)
    return torch.clamp(torch.round(xd * s), -128, 127) / s


def test_ternary_weights_are_codes_times_absmean():
    torch.manual_seed(0)
    w = torch.randn(64, 48) * 0.05
    wq = weight_quant(w)
    gamma = w.abs().mean()
    ratio = wq / gamma
    assert set(torch.unique(ratio.round()).tolist()) <= {-1.0, 0.0, 1.0}
    torch.testing.assert_close(ratio, ratio.round(), atol=1e-6, rtol=0)
    codes, g = ternary_codes(w)
    assert codes.dtype == torch.int8 and set(codes.unique().tolist()) == {-1, 0, 1}
    torch.testing.assert_close(g, gamma)
    torch.testing.assert_close(wq, codes.float() * g)
    # RoundClip(W / (g + eps), -1, 1) element by element
    expected = torch.clamp(torch.round(w / (gamma + EPS)), -1, 1)
    assert torch.equal(codes.float(), expected)


def test_ternary_all_zero_weight_is_zero():
    assert torch.equal(weight_quant(torch.zeros(4, 8)), torch.zeros(4, 8))


@pytest.mark.parametrize("case", ["random", "zero_rows", "outlier", "tiny", "3d"])
def test_activation_quant_matches_formula(case):
    torch.manual_seed(1)
    x = torch.randn(16, 64)
    if case == "zero_rows":
        x[3] = 0
        x[7] = 0
    elif case == "outlier":
        x[2, 5] = 1e4  # one huge value: the rest of that token collapses to 0
    elif case == "tiny":
        x = x * 1e-7  # below eps: the scale is clamped
    elif case == "3d":
        x = torch.randn(2, 9, 64) * 3
    y = activation_quant(x)
    torch.testing.assert_close(y.double(), ref_activation_quant(x), atol=1e-6, rtol=1e-6)
    if case == "zero_rows":
        assert torch.equal(y[3], torch.zeros(64))
    if case == "outlier":
        assert y[2, 5] == pytest.approx(1e4, rel=1e-6)
        assert (y[2, torch.arange(64) != 5].abs() <= 1e4 / 127 / 2 + 1e-3).all()
    # codes are integers in [-128, 127] and at most 255 levels per token
    codes, scale = activation_quant_int8(x)
    assert codes.dtype == torch.int8
    torch.testing.assert_close((codes.float() / scale), y.float(), atol=1e-6, rtol=1e-6)


def test_token_scale_is_one_true_division_as_onnx_computes_it():
    """127 / absmax, correctly rounded in float32 (what ONNX Div and ONNX Runtime compute), not
    reciprocal-then-multiply; and the int8 codes equal those of ONNX Runtime running the canonical formula."""
    import numpy as np

    torch.manual_seed(0)
    x = torch.randn(4096, 64) * torch.rand(4096, 1) * 10
    codes, scale = activation_quant_int8(x)
    amax = x.abs().amax(-1, keepdim=True).clamp(min=EPS).numpy()
    assert np.array_equal(scale.numpy(), np.float32(127.0) / amax)  # bit for bit
    assert not np.array_equal((np.float32(1.0) / amax) * np.float32(127.0), scale.numpy())  # the trap is real

    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Abs", ["x"], ["a"]),
        helper.make_node("ReduceMax", ["a", "axes"], ["m"], keepdims=1),
        helper.make_node("Max", ["m", "eps"], ["mc"]),
        helper.make_node("Div", ["c127", "mc"], ["s"]),
        helper.make_node("Mul", ["x", "s"], ["xs"]),
        helper.make_node("Round", ["xs"], ["r"]),
        helper.make_node("Clip", ["r", "lo", "hi"], ["q"]),
    ]
    init = [
        helper.make_tensor("axes", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("eps", TensorProto.FLOAT, [], [EPS]),
        helper.make_tensor("c127", TensorProto.FLOAT, [], [127.0]),
        helper.make_tensor("lo", TensorProto.FLOAT, [], [-128.0]),
        helper.make_tensor("hi", TensorProto.FLOAT, [], [127.0]),
    ]
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                          [helper.make_tensor_value_info("q", TensorProto.FLOAT, [None, 64])], init)  # fmt: skip
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (q,) = sess.run(None, {"x": x.numpy()})
    assert np.array_equal(q.astype(np.int8), codes.numpy())  # identical, not within a tolerance
    del onnx


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_activation_quant_half_inputs(dtype):
    torch.manual_seed(2)
    x = (torch.randn(8, 32) * 4).to(dtype)
    x[0] = 0
    y = activation_quant(x)
    assert y.dtype == dtype
    # the same float32 computation (ONNX's semantics) on the exact input values, then cast: half inputs
    # never round x*s themselves
    assert torch.equal(y, activation_quant(x.float()).to(dtype))
    torch.testing.assert_close(y.float(), ref_activation_quant(x.float()).float(), rtol=0.02, atol=0)
    assert torch.isfinite(y.float()).all()


def test_gradients_pass_straight_through():
    torch.manual_seed(3)
    layer = BitLinear(32, 16)
    x = torch.randn(5, 32, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)

    # Pass-through gradient: the same forward with quantisers replaced by the identity in backward.
    xn = layer.norm(x.detach())
    xq = ref_activation_quant(xn).float()
    expected_w_grad = g.t() @ xq
    torch.testing.assert_close(layer.weight.grad, expected_w_grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.bias.grad, g.sum(0))

    # Activation STE: d loss / d normed input equals g @ W_q (no zero gradient from round()).
    xn_leaf = layer.norm(x.detach()).detach().requires_grad_(True)
    from edgedf.train.bitlinear import _ste

    y2 = F.linear(_ste(xn_leaf, activation_quant(xn_leaf)), weight_quant(layer.weight.detach()), layer.bias.detach())
    y2.backward(g)
    torch.testing.assert_close(xn_leaf.grad, g @ weight_quant(layer.weight.detach()), atol=1e-5, rtol=1e-5)
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert layer.norm.weight.grad is not None


def test_training_step_moves_master_weights():
    torch.manual_seed(4)
    layer = BitLinear(16, 4)
    before = layer.weight.detach().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(8, 16)).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(before, layer.weight.detach())


@pytest.mark.parametrize("k", list(range(0, 34)) + [191, 192, 768, 1537])
def test_pack_unpack_roundtrip_every_length(k):
    torch.manual_seed(k)
    codes = torch.randint(-1, 2, (3, k), dtype=torch.int8)
    packed = pack_ternary(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (3, (k + 3) // 4)
    assert torch.equal(unpack_ternary(packed, k), codes)


def test_pack_layout_is_documented_order():
    codes = torch.tensor([[-1, 0, 1, 1, 0]], dtype=torch.int8)
    packed = pack_ternary(codes)
    # values c+1 = 0,1,2,2 | 1 (+ padding 1,1,1), element i of each group in bits 2i..2i+1
    assert packed.tolist() == [[0 | 1 << 2 | 2 << 4 | 2 << 6, 1 | 1 << 2 | 1 << 4 | 1 << 6]]


def test_pack_rejects_non_ternary():
    with pytest.raises(ValueError):
        pack_ternary(torch.tensor([[2, 0, 0, 0]]))
    with pytest.raises(ValueError):
        pack_ternary(torch.tensor([[0.5, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError):
        unpack_ternary(torch.zeros(2, 3, dtype=torch.uint8), 20)


@pytest.mark.parametrize("norm", ["rms", "layer"])
@pytest.mark.parametrize("bias", [True, False])
def test_inference_form_equals_training_form(norm, bias):
    torch.manual_seed(5)
    layer = BitLinear(64, 24, bias=bias, norm=norm)
    with torch.no_grad():
        layer.norm.weight.mul_(torch.rand(64) + 0.5)
        if bias:
            layer.bias.normal_()
    layer.eval()
    inf = layer.to_inference().eval()
    assert isinstance(inf, TernaryLinear)
    assert inf.w_packed.dtype == torch.uint8 and inf.w_packed.shape == (24, 16)
    x = torch.randn(4, 7, 64) * 2
    with torch.no_grad():
        assert torch.equal(inf(x), layer(x))
    # and the grad-enabled training-form forward agrees to float rounding
    torch.testing.assert_close(inf(x), layer(x.requires_grad_(True)), atol=1e-5, rtol=1e-5)


def test_to_inference_replaces_nested_bitlinears():
    model = torch.nn.Sequential(BitLinear(8, 8), torch.nn.Sequential(torch.nn.GELU(), BitLinear(8, 4)))
    model.eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        y = model(x)
        inf = to_inference(copy.deepcopy(model))
        assert not any(isinstance(m, BitLinear) for m in inf.modules())
        assert torch.equal(inf(x), y)
    # packed state survives a state_dict round trip
    fresh = to_inference(copy.deepcopy(model))
    fresh.load_state_dict(inf.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), y)


def test_rmsnorm_formula():
    x = torch.randn(3, 10)
    n = RMSNorm(10)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(n(x), expected)


def test_qat_activation_fake_quant_is_onnx_qdq():
    """QAT trains on what the exported QuantizeLinear/DequantizeLinear pair computes: round half to even
    and saturation to [-128, 127] (it clamped at -127, so the most negative code differed)."""
    import numpy as np

    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from edgedf.train.qat import fake_quant_act

    s = 0.05
    x = torch.tensor([-7.0, -6.41, -6.4, -6.35, -0.075, 0.025, 0.075, 6.35, 6.4, 9.0])
    y = fake_quant_act(x, torch.tensor(s)).numpy()
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]  # fmt: skip
    init = [helper.make_tensor("s", TensorProto.FLOAT, [], [s]), helper.make_tensor("z", TensorProto.INT8, [], [0])]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10])], init)  # fmt: skip
    sess = ort.InferenceSession(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    (ref,) = sess.run(None, {"x": x.numpy()})
    assert np.array_equal(y, ref) and y[0] == pytest.approx(-128 * s)
