"""Every export verifies itself: the bundle runs on each backend available here, on the same crops as
PyTorch, and the agreement is recorded in the manifest (and gates the export)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from edgedf.runtime.backends import BackendOptions, available, open_session, run_batched
from edgedf.runtime.bundle import Bundle
from edgedf.runtime.fsutil import atomic_write_bytes
from edgedf.runtime.parity import REFERENCE_CROPS, compare, load_reference

from .calib import CropSource


def verification_models(bundle: Bundle) -> dict[str, Path | bytes]:
    """backend -> the model it runs here. ONNX runs on ONNX Runtime and OpenVINO; IR on OpenVINO;
    a TensorRT bundle's ONNX (after the same load-time expansion TensorRT gets) on both as a proxy.
    Each backend gets what it loads on a device (its model_for_bundle): a `native` bundle runs in edgedf's kernel on
    both where it builds."""
    from edgedf.runtime.backends import openvino, ort
    from edgedf.runtime.ternary import expand_packed_ternary

    entry = bundle.entry
    if entry.suffix == ".xml":
        return {"openvino": entry}
    if bundle.backend == "tensorrt":
        return {"ort": expand_packed_ternary(entry.read_bytes()), "openvino": openvino.model_for_bundle(bundle)}
    return {"ort": ort.model_for_bundle(bundle), "openvino": openvino.model_for_bundle(bundle)}


def verify(
    bundle: Bundle, reference: torch.nn.Module, source: CropSource, n: int = 256, batch: int = 32, offset: int = 10_000
) -> dict:
    """Parity of every backend here against PyTorch on n crops, and on the bundle's reference crops (what
    the device's own check is held to: runtime/parity.py)."""
    x = source.crops(n, offset=offset)
    reference.eval()
    with torch.no_grad():
        ref = torch.cat([reference(torch.from_numpy(x[i : i + batch])) for i in range(0, n, batch)]).numpy()
    stored = load_reference(bundle)
    fixed = bundle.manifest.get("input", {}).get("batch")
    results = {}
    for backend, model in verification_models(bundle).items():
        if not available(backend):
            results[backend] = {"status": "not installed"}
            continue
        # a TensorRT bundle's proxy runs its Q/DQ as float maths: x86 int8 kernels (int16 pair sums without
        # VNNI) would saturate where TensorRT's int32 accumulators do not
        proxy = bundle.backend == "tensorrt"
        sess = open_session(model, backend, BackendOptions(precision=bundle.manifest["precision"], qdq_as_float=proxy))
        results[backend] = {
            "status": "ok",
            **compare(ref, run_batched(sess, x, fixed, batch), bundle.fake_index, bundle.threshold),
        }
        if stored is not None:
            images, logits = stored
            out = run_batched(sess, bundle.spec.to_input(images, "BGR"), fixed, batch)
            results[backend]["reference_crops"] = compare(logits, out, bundle.fake_index, bundle.threshold)
        if backend == "ort" and getattr(model, "library", None):  # a device without edgedf's op: the ONNX functions
            plain = open_session(bundle.entry, "ort", BackendOptions(precision=bundle.manifest["precision"]))
            out = run_batched(plain, x, fixed, batch)
            results[backend]["without_op"] = compare(ref, out, bundle.fake_index, bundle.threshold)
    return {
        "crops": n,
        "source": source.kind,
        "reference": "pytorch (eval)",
        "backends": results,
        **({"proxy_for": "tensorrt"} if bundle.backend == "tensorrt" else {}),
    }


def write_reference(out: Path, model: torch.nn.Module, source: CropSource, n: int = REFERENCE_CROPS) -> dict:
    """The bundle's reference crops (uint8, before preprocessing) and PyTorch's logits for them."""
    images = source.images(n, offset=20_000)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(source.spec.to_input(images, "BGR"))).numpy().astype(np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, logits=logits)
    atomic_write_bytes(out, buf.getvalue())
    return {"file": out.name, "crops": n, "source": source.kind, "outputs": "pytorch logits (eval)"}
