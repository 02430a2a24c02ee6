"""ONNX Runtime backend (CPU; the CUDA/TensorRT execution providers are used when present and asked for)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import EdgedfError

INSTALL_HINT = "pip install onnxruntime"


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OrtSession:
    def __init__(
        self,
        model: Path | bytes,
        threads: int = 0,
        providers: list[str] | None = None,
        qdq_as_float: bool = False,
        profile: str | None = None,
    ):
        import onnxruntime as ort

        so = ort.SessionOptions()
        library = getattr(model, "library", None)
        if library:  # edgedf's TernaryLinear op (ort_native)
            so.register_custom_ops_library(str(library))
        if profile:  # ONNX Runtime's per-node profile, written by end_profiling() to PROFILE_<date>.json
            so.enable_profiling = True
            so.profile_file_prefix = profile
        if qdq_as_float:  # DequantizeLinear -> float MatMul: exact int8 products, as a GPU's int32 accumulators give
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        if threads:
            so.intra_op_num_threads = threads
        # Idle pool threads must sleep, not spin: edgedf runs several sessions in one process (detector and
        # classifier), and a pool spinning after its run takes the cores from the next session. On 2 cores,
        # `edgedf run --every 1` on a 9 s 360p clip took 6.1-7.5 s with spinning and 4.0-4.8 s without.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        src = model if isinstance(model, bytes) else str(model)
        try:
            self._sess = ort.InferenceSession(src, so, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types; keep the message, drop the traceback
            where = "model bytes" if isinstance(model, bytes) else str(model)
            raise EdgedfError(f"ONNX Runtime cannot load {where}: {str(e).splitlines()[0]}") from None
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._sess.run(None, feeds)

    def end_profiling(self) -> str:
        """Ends a profiled session's profile (see `profile`); returns the JSON file's path."""
        return self._sess.end_profiling()


class NativeModel(bytes):
    """The canonical ONNX of a `native` bundle, with the op library that runs its TernaryLinear nodes."""

    library: Path


def model_for_bundle(bundle) -> Path | bytes:
    """A bundle's ONNX as it is, except `native` (the canonical graph): its TernaryLinear nodes run in edgedf's kernel
    (ort_native), built on first use, each with the norm, GELU and residual add around it taken in (ort_native.fuse);
    where it cannot be built or would not pay, ONNX Runtime runs the ONNX function
    each node carries (int8 stock ops: the same codes, int8-exact's speed), with one line on stderr saying why."""
    if bundle.manifest.get("lowering") != "native":
        return bundle.entry
    from . import ort_native

    try:
        library = ort_native.library()
        model = NativeModel(ort_native.fuse(bundle.entry.read_bytes()))
        model.library = library
        return model
    except EdgedfError as e:
        _warn_once(f"edgedf: {e}; the ternary layers run in ONNX Runtime's own int8 kernels")
        return bundle.entry


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print(msg, file=sys.stderr)


def open(model: Path | bytes, options) -> OrtSession:  # noqa: A001 - the backend interface's name
    return OrtSession(model, threads=options.threads, qdq_as_float=options.qdq_as_float)
