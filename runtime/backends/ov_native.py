"""edgedf's native `edgedf::TernaryLinear` kernel for OpenVINO (runtime/native/ternary_linear.cpp).

OpenVINO's wheel ships its C++ headers and libraries, so the kernel is compiled here against the installed
OpenVINO on first use (a few seconds with g++), once per OpenVINO version and kernel source (native_build.py), into
a cache:

    $EDGEDF_CACHE_DIR/ov_ext/  (default ~/.cache/edgedf/ov_ext/)
    python -m edgedf.runtime.backends.ov_native       # build now; prints the library and the CPU path it uses

It computes BitNet's per-token int8 codes exactly (the same codes as PyTorch and the `int8-exact` ONNX
Runtime lowering) and a ternary GEMM on a path chosen at run time (AMX, AVX-512 VNNI, AVX-VNNI, AVX2, scalar).
Where it cannot be built (no C++ compiler, not Linux), a `native` bundle still runs: runtime/ternary.py
expands each TernaryLinear into the same arithmetic in stock ops (about fp32 speed; OpenVINO computes
127 / absmax there as a reciprocal multiply, so a code on a .5 boundary can round the other way).
"""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path

from ..errors import EdgedfError
from . import native_build
from .native_build import cpu_path  # noqa: F401 - part of this module's interface

SOURCE = native_build.NATIVE / "ternary_linear.cpp"
FLAGS = ["-DOV_THREAD=OV_THREAD_TBB"]  # beside native_build.FLAGS
# the OpenVINO libraries the extension links: the core, the ONNX frontend (for the conversion rule), TBB
LIBS = ("libopenvino.so", "libopenvino_onnx_frontend.so", "libtbb.so")


def _openvino() -> tuple[str, Path]:
    try:
        import openvino
    except ImportError:
        raise EdgedfError("the native ternary kernel needs OpenVINO: pip install 'edgedf[openvino]'") from None
    return openvino.__version__, Path(openvino.__file__).parent


def library_path(source: Path | None = None) -> Path:
    version, _ = _openvino()
    return native_build.library_path("ov_ext", "libedgedf_ternary", source or SOURCE, version, *FLAGS)


def build(force: bool = False, source: Path | None = None) -> Path:
    """The compiled extension (of `source`: another version of the kernel, for benchmarks), building it if needed.
    One-line EdgedfError when it cannot be built."""
    source = source or SOURCE
    out = library_path(source)
    if out.exists() and not force:
        return out
    _, ov_dir = _openvino()
    libs_dir, include = ov_dir / "libs", ov_dir / "include"
    if not (include / "openvino" / "core" / "op_extension.hpp").exists():
        raise EdgedfError(f"this OpenVINO install has no C++ headers ({include}); cannot build the native kernel")
    link = []
    for name in LIBS:  # the wheel ships versioned names only (libopenvino.so.2641)
        found = sorted(libs_dir.glob(name + "*"))
        if not found:
            raise EdgedfError(f"{name} not found in {libs_dir}; cannot build the native ternary kernel")
        link.append(f"-l:{found[0].name}")
    args = [*FLAGS, f"-I{include}", f"-L{libs_dir}", *link, f"-Wl,-rpath,{libs_dir}"]
    return native_build.compile_library(out, source, args, "the native ternary kernel")


@cache
def extension() -> Path:
    """The extension for this process (built once). Set EDGEDF_NATIVE=0 to never use it."""
    if os.environ.get("EDGEDF_NATIVE", "1") == "0":
        raise EdgedfError("the native ternary kernel is switched off (EDGEDF_NATIVE=0)")
    return build()


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
