import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_helpers import tiny_model
from onnx import TensorProto
from onnx import helper as oh

from edgedf.export.onnx_export import export_onnx
from edgedf.export.ternary_op import DOMAIN, OPSET, attach_functions, ternary_linear
from edgedf.runtime.spec import FaceCropSpec
from edgedf.runtime.ternary import unpack_ternary_np
from edgedf.train.bitlinear import BitLinear, pack_ternary, unpack_ternary


def single_node_model(op_type: str, inputs, outputs, inits) -> onnx.ModelProto:
    node = oh.make_node(
        op_type, [i.name for i in inputs] + [t.name for t in inits], [o.name for o in outputs], domain=DOMAIN
    )
    graph = oh.make_graph([node], "g", inputs, outputs, initializer=inits)
    m = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)])
    m.ir_version = 8
    return attach_functions(m)


def test_unpack_function_matches_torch_and_numpy():
    codes = torch.randint(-1, 2, (24, 40), dtype=torch.int8)
    packed = pack_ternary(codes).numpy()
    m = single_node_model(
        "UnpackTernary",
        [oh.make_tensor_value_info("p", TensorProto.UINT8, [24, 10])],
        [oh.make_tensor_value_info("c", TensorProto.INT8, [40, 24])],
        [],
    )
    onnx.checker.check_model(m)
    out = ort.InferenceSession(m.SerializeToString()).run(None, {"p": packed})[0]
    assert out.dtype == np.int8 and out.shape == (40, 24)
    np.testing.assert_array_equal(out, codes.numpy().T)
    np.testing.assert_array_equal(unpack_ternary_np(packed), codes.numpy())
    np.testing.assert_array_equal(unpack_ternary(torch.from_numpy(packed), 40).numpy(), codes.numpy())


def test_ternary_linear_function_matches_torch():
    torch.manual_seed(0)
    layer = BitLinear(64, 48).eval()
    inf = layer.to_inference()
    x = torch.randn(3, 7, 64) * 2
    x[0, 0] = 0  # an all-zero token
    inits = [
        onnx.numpy_helper.from_array(inf.w_packed.numpy(), "w"),
        onnx.numpy_helper.from_array(inf.w_scale.numpy(), "g"),
        onnx.numpy_helper.from_array(inf.bias.numpy(), "b"),
    ]
    m = single_node_model(
        "TernaryLinear",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [3, 7, 64])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [3, 7, 48])],
        inits,
    )
    onnx.checker.check_model(m)
    y = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x.numpy()})[0]
    ref = ternary_linear(x, inf.w_packed, inf.w_scale, inf.bias).numpy()
    np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # and the op is the inference-form layer after its norm
        torch.testing.assert_close(ternary_linear(inf.norm(x), inf.w_packed, inf.w_scale, inf.bias), inf(x))


def test_canonical_onnx_structure_and_parity():
    model = tiny_model("bit")
    proto = export_onnx(model, spec=FaceCropSpec(input_size=32))
    onnx.checker.check_model(proto)
    tl = [n for n in proto.graph.node if n.domain == DOMAIN]
    assert len(tl) == 4 * model.cfg.depth and {n.op_type for n in tl} == {"TernaryLinear"}
    inits = {i.name: i for i in proto.graph.initializer}
    for n in tl:
        w = inits[n.input[1]]
        assert w.data_type == TensorProto.UINT8 and w.dims[1] * 4 in (32, 128)
    assert {f.name for f in proto.functions} == {"TernaryLinear", "UnpackTernary"}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert FaceCropSpec.from_json(meta["edgedf.preprocessing"]) == FaceCropSpec(input_size=32)
    assert '"variant": "bit"' in meta["edgedf.model"]
    # no exporter debug info (stack traces with local paths) left in the file
    assert not any(n.metadata_props for n in proto.graph.node)
    x = torch.randn(16, 3, 32, 32)
    sess = ort.InferenceSession(proto.SerializeToString())
    y = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(y, ref, atol=0.05 * np.abs(ref).max())
    assert (np.argmax(y, 1) == np.argmax(ref, 1)).mean() >= 0.9
    # dynamic batch
    assert sess.run(None, {"input": x[:3].numpy()})[0].shape == (3, 2)


@pytest.mark.parametrize("variant", ["fp", "bit"])
def test_fixed_batch_export(variant):
    proto = export_onnx(tiny_model(variant), batch=4, dynamic=False)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, 3, 32, 32]
