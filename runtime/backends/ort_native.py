"""edgedf's native `edgedf::TernaryLinear` kernel for ONNX Runtime (runtime/native/ort_ternary.cpp).

ONNX Runtime's wheel ships no C headers, so edgedf carries the one its custom ops need (the C API, MIT; see
runtime/native/third_party/onnxruntime/LICENSE). The op is compiled here on first use (a few seconds with g++),
once per kernel source, into a cache, and registered with each ONNX Runtime session that opens a `native` bundle:

    $EDGEDF_CACHE_DIR/ort_ext/  (default ~/.cache/edgedf/ort_ext/)
    python -m edgedf.runtime.backends.ort_native      # build now; prints the library and the CPU path it uses

The kernel is the OpenVINO op's (ternary_core.hpp): BitNet's per-token int8 codes exactly, a ternary GEMM on the
CPU's best path (AMX, AVX-512 VNNI, AVX-VNNI, AVX2, scalar). Where it cannot be built (no C++ compiler, not Linux)
or is switched off (EDGEDF_NATIVE=0), and on CPUs where it would not pay (not x86-64, no AVX2), a `native` bundle
still runs: ONNX Runtime runs each TernaryLinear as the ONNX function the bundle carries, BitNet's integer arithmetic
in stock ops, which its optimiser fuses into what the `int8-exact` lowering writes (the same codes, its speed).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from functools import cache
from pathlib import Path

from ..errors import EdgedfError
from . import native_build
from .native_build import cpu_path  # noqa: F401 - part of this module's interface

SOURCE = native_build.NATIVE / "ort_ternary.cpp"
HEADER = native_build.NATIVE / "third_party" / "onnxruntime" / "onnxruntime_c_api.h"
MIN_ORT = (1, 21)  # the C API version the header declares: the op loads into this release and every later one


def library_path(source: Path | None = None) -> Path:
    header = hashlib.sha256(HEADER.read_bytes()).hexdigest()
    return native_build.library_path("ort_ext", "libedgedf_ort_ternary", source or SOURCE, header)


def build(force: bool = False, source: Path | None = None) -> Path:
    """The compiled op library, building it if needed. One-line EdgedfError when it cannot be built."""
    source = source or SOURCE
    out = library_path(source)
    if out.exists() and not force:
        return out
    return native_build.compile_library(out, source, [], "the native ternary kernel for ONNX Runtime")


def _ort_version() -> tuple[int, int]:
    import onnxruntime

    return tuple(int(p) for p in onnxruntime.__version__.split(".")[:2])  # type: ignore[return-value]


@cache
def library() -> Path:
    """The op library for this process (built once), where it beats ONNX Runtime's own int8 kernels: x86-64 with
    AVX2 (its scalar path would not). Set EDGEDF_NATIVE=0 to never use it."""
    if os.environ.get("EDGEDF_NATIVE", "1") == "0":
        raise EdgedfError("the native ternary kernel is switched off (EDGEDF_NATIVE=0)")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise EdgedfError(f"the native ternary kernel is for x86-64 CPUs (this is {platform.machine()})")
    if _ort_version() < MIN_ORT:
        raise EdgedfError(f"the native ternary kernel needs ONNX Runtime {'.'.join(map(str, MIN_ORT))} or later")
    lib = build()
    if cpu_path(lib) == "scalar" and "EDGEDF_TERNARY_ISA" not in os.environ:
        raise EdgedfError("the native ternary kernel needs AVX2, which this CPU does not have")
    return lib


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        lib = build(force="--force" in argv)
    except EdgedfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{lib}\nkernel: {cpu_path(lib)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
