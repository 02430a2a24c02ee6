"""Backends: one module each (ort, openvino, tensorrt), the same small interface.

    open(model, options) -> Session      model: a path to an ONNX/IR file, or ONNX bytes
    Session.run(feeds: dict[str, ndarray]) -> list[ndarray]
    Session.input_names / output_names

`open_classifier(bundle)` wraps that into the DESIGN.md contract: infer(float32[N,3,H,W]) -> float32[N,2].
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..bundle import Bundle
from ..errors import EdgedfError

BACKENDS = ("ort", "openvino", "tensorrt")


@dataclass
class BackendOptions:
    threads: int = 0  # 0: the backend's default
    device: str = ""  # backend-specific: "CPU" for OpenVINO, a CUDA ordinal for TensorRT; "" = default
    cache_dir: Path | None = None  # where compiled engines may be cached (TensorRT)
    precision: str = ""  # the bundle's precision; TensorRT sets its builder flags from it
    qdq_as_float: bool = False  # ONNX Runtime: run Q/DQ as float maths, not fused x86 int8 kernels (TensorRT proxy)


class Session(Protocol):
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def backend_module(name: str):
    if name not in BACKENDS:
        raise EdgedfError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{name}")


def available(name: str) -> bool:
    return backend_module(name).available()


def installed_backend(name: str):
    """The backend's module, or one line saying how to install it."""
    mod = backend_module(name)
    if not mod.available():
        raise EdgedfError(f"backend {name} is not installed here ({mod.INSTALL_HINT})")
    return mod


def open_session(model: Path | bytes, backend: str, options: BackendOptions | None = None) -> Session:
    return installed_backend(backend).open(model, options or BackendOptions())


def run_batched(session: Session, x: np.ndarray, fixed: int | None = None, batch: int | None = None) -> np.ndarray:
    """The session's first output for x: in one call, or in chunks of `batch`, or of `fixed` for a fixed-batch
    model (e.g. a static TensorRT engine), whose last chunk is padded with zeros."""
    step = int(fixed or batch or max(len(x), 1))
    name, out = session.input_names[0], []
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        n = len(chunk)
        if fixed and n < step:
            chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), np.float32)])
        out.append(session.run({name: chunk})[0][:n])
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


class Classifier:
    """The classifier of a bundle on a backend: infer(float32[N,3,H,W]) -> float32[N,C] logits."""

    def __init__(self, bundle: Bundle, backend: str | None = None, options: BackendOptions | None = None):
        self.bundle = bundle
        self.backend = backend or bundle.backend
        mod = installed_backend(self.backend)  # before preparing the model, whose own needs would hide this
        model = mod.model_for_bundle(bundle) if hasattr(mod, "model_for_bundle") else bundle.entry
        options = options or BackendOptions()
        options.precision = options.precision or bundle.manifest["precision"]
        self.session = open_session(model, self.backend, options)
        self.input_name = self.session.input_names[0]
        self.fixed_batch = bundle.manifest.get("input", {}).get("batch")  # None: dynamic

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4:
            raise EdgedfError(f"classifier input must be [N, 3, H, W], got shape {x.shape}")
        return run_batched(self.session, x, self.fixed_batch).astype(np.float32, copy=False)

    def p_fake(self, batch: np.ndarray) -> np.ndarray:
        return self.bundle.p_fake(self.infer(batch))


def open_classifier(bundle: Bundle, backend: str | None = None, options: BackendOptions | None = None) -> Classifier:
    return Classifier(bundle, backend, options)
