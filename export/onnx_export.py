"""torch -> canonical ONNX. BitLinear layers become single `edgedf::TernaryLinear` nodes with 2-bit packed
weights (export/ternary_op.py); QAT linears become int8 Q/DQ; everything else is standard opset-18 ONNX.
The preprocessing spec and the model facts go into metadata_props, so a bare .onnx file still says how
its input must be made.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from contextlib import redirect_stdout

import onnx
import torch
from torch import nn

from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.spec import FaceCropSpec
from edgedf.train.bitlinear import BitLinear, TernaryLinear, to_inference
from edgedf.train.vit import VisionTransformer, count_params

from . import qdq_op, ternary_op

INPUT, OUTPUT = "input", "logits"


class _ExportTernary(nn.Module):
    """TernaryLinear whose forward is the one custom op that exports as edgedf::TernaryLinear."""

    def __init__(self, t: TernaryLinear):
        super().__init__()
        self.norm = t.norm
        self.register_buffer("w_packed", t.w_packed)
        self.register_buffer("w_scale", t.w_scale)
        self.register_buffer("bias", t.bias if t.bias is not None else torch.zeros(t.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.edgedf.ternary_linear(self.norm(x), self.w_packed, self.w_scale, self.bias)


def _swap(model: nn.Module, kind: type, make) -> None:
    for name, child in list(model.named_children()):
        if isinstance(child, kind):
            setattr(model, name, make(child))
        else:
            _swap(child, kind, make)


def export_form(model: VisionTransformer) -> nn.Module:
    """A copy of the model in the form that exports to canonical ONNX."""
    m = copy.deepcopy(model).eval().cpu().float()
    if any(isinstance(x, BitLinear) for x in m.modules()):
        to_inference(m)
        _swap(m, TernaryLinear, _ExportTernary)
    if m.cfg.qat:
        from edgedf.train.qat import QATLinear

        _swap(m, QATLinear, qdq_op.ExportQDQLinear)
    return m


def metadata(model: VisionTransformer, spec: FaceCropSpec, labels: list[str], extra: dict | None = None) -> dict:
    cfg = model.cfg
    return {
        "edgedf.preprocessing": spec.to_json(),
        "edgedf.model": json.dumps(cfg.to_dict(), sort_keys=True),
        "edgedf.labels": json.dumps(labels),
        "edgedf.params": str(count_params(model)),
        **{f"edgedf.{k}": (v if isinstance(v, str) else json.dumps(v)) for k, v in (extra or {}).items()},
    }


def set_metadata(proto: onnx.ModelProto, meta: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for k, v in meta.items():
        if k in existing:
            existing[k].value = v
        else:
            proto.metadata_props.add(key=k, value=v)


def strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debug metadata (fx nodes, stack traces with local paths): about 1 MB
    for ViT-S, which is 15 % of a ternary model's file."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]


def export_onnx(
    model: VisionTransformer,
    *,
    imgsz: int | None = None,
    batch: int = 1,
    dynamic: bool = True,
    spec: FaceCropSpec | None = None,
    labels: list[str] | None = None,
) -> onnx.ModelProto:
    """The canonical ONNX of `model` (returned in memory; callers write it atomically)."""
    cfg = model.cfg
    imgsz = imgsz or cfg.img_size
    if imgsz != cfg.img_size:
        raise EdgedfError(
            f"--imgsz {imgsz} differs from the checkpoint's img_size {cfg.img_size}; "
            "fine-tune at the new size (edgedf train --init) rather than resizing at export"
        )
    m = export_form(model)
    x = torch.zeros(batch, cfg.in_chans, imgsz, imgsz)
    dyn = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            m,
            (x,),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=dyn,
            opset_version=ternary_op.OPSET,
            custom_translation_table={**ternary_op.TRANSLATIONS, **qdq_op.TRANSLATIONS},
            optimize=True,
            verbose=False,
        )
    proto = prog.model_proto
    strip_debug_info(proto)
    ternary_op.attach_functions(proto)
    if dynamic:
        proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
        proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    set_metadata(proto, metadata(model, spec or FaceCropSpec(input_size=imgsz), labels or ["real", "fake"]))
    return proto
