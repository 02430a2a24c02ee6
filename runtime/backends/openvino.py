"""OpenVINO backend: reads OpenVINO IR (.xml + .bin) or ONNX, compiles for the CPU by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EdgedfError

INSTALL_HINT = "pip install 'edgedf[openvino]'"


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoSession:
    def __init__(self, model: Path | bytes, threads: int = 0, device: str = ""):
        import openvino as ov

        core = ov.Core()
        try:
            if isinstance(model, bytes):
                m = core.read_model(model=model, weights=ov.Tensor(np.empty(0, np.uint8)))
            else:
                m = core.read_model(str(model))
            config = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
            config["PERFORMANCE_HINT"] = "LATENCY"
            # OpenVINO's CPU plugin computes in bf16 by default where the CPU has it, which moved a ViT's
            # logits by 1e-3 (fp32) and flipped 1.6 % of decisions (fp16 weights) here. An fp16 bundle
            # means fp16 weights (half the size); on the CPU they are computed in f32.
            if (device or "CPU") == "CPU":
                config["INFERENCE_PRECISION_HINT"] = "f32"
            self._compiled = core.compile_model(m, device or "CPU", config)
        except Exception as e:
            where = "model bytes" if isinstance(model, bytes) else str(model)
            raise EdgedfError(f"OpenVINO cannot load {where}: {str(e).splitlines()[0]}") from None
        self._request = self._compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self._compiled.inputs]
        self.output_names = [p.get_any_name() for p in self._compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = self._request.infer(feeds)
        return [np.asarray(res[o]) for o in self._compiled.outputs]


def model_for_bundle(bundle) -> Path | bytes:
    """IR files load as they are; an ONNX entry (a ternary bundle lowered to int8 Q/DQ) keeps its weights
    2-bit on disk and is expanded to int8 here: OpenVINO does not run edgedf's UnpackTernary function."""
    if bundle.entry.suffix != ".onnx":
        return bundle.entry
    from ..ternary import expand_packed_ternary

    return expand_packed_ternary(bundle.entry.read_bytes())


def open(model: Path | bytes, options) -> OpenVinoSession:  # noqa: A001
    return OpenVinoSession(model, threads=options.threads, device=options.device)
