"""Every export verifies itself: the bundle runs on each backend available here, on the same crops as
PyTorch, and the agreement is recorded in the manifest (and gates the export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgedf.runtime.backends import BackendOptions, available, open_session
from edgedf.runtime.bundle import Bundle
from edgedf.runtime.parity import compare

from .calib import CropSource


def verification_models(bundle: Bundle) -> dict[str, Path | bytes]:
    """backend -> the model it runs here. ONNX runs on ONNX Runtime and OpenVINO; IR on OpenVINO;
    a TensorRT bundle's ONNX (after the same load-time expansion TensorRT gets) on both as a proxy.
    OpenVINO gets the expanded form (int8 weight constants instead of edgedf::UnpackTernary) too."""
    from edgedf.runtime.ternary import expand_packed_ternary

    entry = bundle.entry
    if entry.suffix == ".xml":
        return {"openvino": entry}
    expanded = expand_packed_ternary(entry.read_bytes())  # OpenVINO does not inline edgedf functions
    return {"ort": expanded if bundle.backend == "tensorrt" else entry, "openvino": expanded}


def verify(
    bundle: Bundle, reference: torch.nn.Module, source: CropSource, n: int = 256, batch: int = 32, offset: int = 10_000
) -> dict:
    x = source.crops(n, offset=offset)
    reference.eval()
    with torch.no_grad():
        ref = torch.cat([reference(torch.from_numpy(x[i : i + batch])) for i in range(0, n, batch)]).numpy()
    results = {}
    for backend, model in verification_models(bundle).items():
        if not available(backend):
            results[backend] = {"status": "not installed"}
            continue
        sess = open_session(model, backend, BackendOptions(precision=bundle.manifest["precision"]))
        name = sess.input_names[0]
        fixed = bundle.manifest.get("input", {}).get("batch")
        step = fixed or batch
        outs = []
        for i in range(0, n, step):
            chunk = x[i : i + step]
            pad = (fixed or len(chunk)) - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            outs.append(sess.run({name: chunk})[0][: len(chunk) - pad])
        results[backend] = {"status": "ok", **compare(ref, np.concatenate(outs), bundle.fake_index, bundle.threshold)}
    return {
        "crops": n,
        "source": source.kind,
        "reference": "pytorch (eval)",
        "backends": results,
        **({"proxy_for": "tensorrt"} if bundle.backend == "tensorrt" else {}),
    }
