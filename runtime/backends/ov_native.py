"""edgedf's native `edgedf::TernaryLinear` kernel for OpenVINO (runtime/native/ternary_linear.cpp).

OpenVINO's wheel ships its C++ headers and libraries, so the kernel is compiled here against the installed
OpenVINO on first use (a few seconds with g++), once per OpenVINO version and kernel source, into a cache:

    $EDGEDF_CACHE_DIR/ov_ext/  (default ~/.cache/edgedf/ov_ext/)
    python -m edgedf.runtime.backends.ov_native       # build now; prints the library and the CPU path it uses

It computes BitNet's per-token int8 codes exactly (the same codes as PyTorch and the `int8-exact` ONNX
Runtime lowering) and a ternary GEMM with an AVX-512 VNNI, an AVX2 or a scalar path chosen at run time.
Where it cannot be built (no C++ compiler, not Linux), a `native` bundle still runs: runtime/ternary.py
expands each TernaryLinear into the same arithmetic in stock ops (about fp32 speed; OpenVINO computes
127 / absmax there as a reciprocal multiply, so a code on a .5 boundary can round the other way).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

from ..errors import EdgedfError

SOURCE = Path(__file__).resolve().parent.parent / "native" / "ternary_linear.cpp"
# -ffp-contract=off: no fused multiply-adds, so the epilogue rounds as the tests' float32 reference does.
# -fvisibility=hidden: only the two entry points are exported (create_extensions, edgedf_ternary_isa). Otherwise a
# function-local static such as the chosen CPU path is a GNU unique symbol, which the dynamic linker shares between
# two builds loaded in one process (ab_native.py): the second ran the first one's path number, read in its own enum.
FLAGS = [
    "-O3",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-fvisibility=hidden",
    "-fvisibility-inlines-hidden",
    "-ffp-contract=off",
    "-DOV_THREAD=OV_THREAD_TBB",
]
# the OpenVINO libraries the extension links: the core, the ONNX frontend (for the conversion rule), TBB
LIBS = ("libopenvino.so", "libopenvino_onnx_frontend.so", "libtbb.so")


def cache_dir() -> Path:
    root = os.environ.get("EDGEDF_CACHE_DIR") or Path.home() / ".cache" / "edgedf"
    return Path(root) / "ov_ext"


def _openvino() -> tuple[str, Path]:
    try:
        import openvino
    except ImportError:
        raise EdgedfError("the native ternary kernel needs OpenVINO: pip install 'edgedf[openvino]'") from None
    return openvino.__version__, Path(openvino.__file__).parent


def _compiler() -> str | None:
    for cxx in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cxx and shutil.which(cxx):
            return cxx
    return None


def library_path(source: Path | None = None) -> Path:
    version, _ = _openvino()
    key = hashlib.sha256((source or SOURCE).read_bytes() + " ".join([version, *FLAGS]).encode()).hexdigest()[:16]
    return cache_dir() / f"libedgedf_ternary-{key}.so"


def build(force: bool = False, source: Path | None = None) -> Path:
    """The compiled extension (of `source`: another version of the kernel, for benchmarks), building it if needed.
    One-line EdgedfError when it cannot be built."""
    source = source or SOURCE
    out = library_path(source)
    if out.exists() and not force:
        return out
    if not sys.platform.startswith("linux"):
        raise EdgedfError(f"the native ternary kernel builds on Linux only (this is {sys.platform})")
    cxx = _compiler()
    if cxx is None:
        raise EdgedfError("no C++ compiler found to build the native ternary kernel (install g++, or set CXX)")
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
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".so.tmp", dir=out.parent)
    os.close(fd)
    cmd = [cxx, *FLAGS, f"-I{include}", str(source), "-o", tmp, f"-L{libs_dir}", *link, f"-Wl,-rpath,{libs_dir}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:200])
            raise EdgedfError(f"building the native ternary kernel failed ({cxx}): {first}")
        os.replace(tmp, out)  # atomic: a concurrent build or a crash never leaves a half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@cache
def extension() -> Path:
    """The extension for this process (built once). Set EDGEDF_NATIVE=0 to never use it."""
    if os.environ.get("EDGEDF_NATIVE", "1") == "0":
        raise EdgedfError("the native ternary kernel is switched off (EDGEDF_NATIVE=0)")
    return build()


def cpu_path(lib: Path) -> str:
    """Which kernel the library runs on this CPU: amx-int8, avx512-vnni, avx-vnni, avx2 or scalar."""
    fn = ctypes.CDLL(str(lib)).edgedf_ternary_isa
    fn.restype = ctypes.c_char_p
    return fn().decode()


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
