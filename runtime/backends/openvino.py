"""OpenVINO backend: reads OpenVINO IR (.xml + .bin) or ONNX, compiles for the CPU by default."""

from __future__ import annotations

import sys
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
    def __init__(self, model: Path | bytes, threads: int = 0, device: str = "", extensions: tuple[Path, ...] = ()):
        import openvino as ov

        core = ov.Core()
        try:
            for ext in extensions:
                core.add_extension(str(ext))
            if isinstance(model, bytes):
                m = core.read_model(model=bytes(model), weights=ov.Tensor(np.empty(0, np.uint8)))
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


class NativeModel(bytes):
    """The canonical ONNX of a `native` bundle, with the extension that runs its TernaryLinear nodes."""

    extension: Path


def model_for_bundle(bundle) -> Path | bytes:
    """IR files load as they are. An ONNX entry keeps its ternary weights 2-bit on disk:
    - lowered to int8 Q/DQ: expanded to int8 here (OpenVINO does not run edgedf's UnpackTernary function);
    - lowered to MatMulNBits: its weight expressions folded into the constants OpenVINO's converter takes;
    - `native` (the canonical graph): run by edgedf's kernel (ov_native), built on first use; where it cannot
      be built, the same arithmetic in stock ops (slower; a code on a .5 boundary may round the other way),
      with one line on stderr saying why."""
    if bundle.entry.suffix != ".onnx":
        return bundle.entry
    from .. import ternary

    data = bundle.entry.read_bytes()
    if bundle.manifest.get("lowering") != "native":
        return ternary.fold_constant_inputs(ternary.expand_packed_ternary(data))
    from . import ov_native

    try:
        model = NativeModel(data)
        model.extension = ov_native.extension()
        return model
    except EdgedfError as e:
        _warn_once(f"edgedf: {e}; running the ternary layers in stock OpenVINO ops (about fp32 speed)")
        return ternary.expand_ternary_linear(data)


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print(msg, file=sys.stderr)


def open(model: Path | bytes, options) -> OpenVinoSession:  # noqa: A001
    ext = getattr(model, "extension", None)
    return OpenVinoSession(model, threads=options.threads, device=options.device, extensions=(ext,) if ext else ())
