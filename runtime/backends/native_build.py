"""Building edgedf's native ternary kernel for a backend (ov_native: OpenVINO; ort_native: ONNX Runtime).

Both compile runtime/native/ (the kernel, ternary_core.hpp, and each backend's op around it) with the machine's C++
compiler on first use, into a cache keyed by the sources, the flags and the backend's version:

    $EDGEDF_CACHE_DIR/<kind>/  (default ~/.cache/edgedf/<kind>/)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import EdgedfError

NATIVE = Path(__file__).resolve().parent.parent / "native"
CORE = NATIVE / "ternary_core.hpp"  # the kernel both ops include
# -ffp-contract=off: no fused multiply-adds, so the epilogue rounds as the tests' float32 reference does.
# -fvisibility=hidden: only the entry points are exported. Otherwise a function-local static such as the chosen CPU
# path is a GNU unique symbol, which the dynamic linker shares between two builds loaded in one process
# (ab_native.py): the second ran the first one's path number, read in its own enum.
FLAGS = [
    "-O3",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-fvisibility=hidden",
    "-fvisibility-inlines-hidden",
    "-ffp-contract=off",
]


def compiler() -> str | None:
    for cxx in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cxx and shutil.which(cxx):
            return cxx
    return None


def cache_dir(kind: str) -> Path:
    root = os.environ.get("EDGEDF_CACHE_DIR") or Path.home() / ".cache" / "edgedf"
    return Path(root) / kind


def library_path(kind: str, stem: str, source: Path, *key: str) -> Path:
    """Where the library built from `source` (and the core it includes) with these key strings is cached. The core
    is the ternary_core.hpp beside `source` where there is one (#include "..." looks there first: another version
    of the kernel, ab_native.py), else the shipped one."""
    core = source.parent / CORE.name
    core = core if core.exists() else CORE
    h = hashlib.sha256(source.read_bytes() + core.read_bytes() + " ".join(key).encode()).hexdigest()[:16]
    return cache_dir(kind) / f"{stem}-{h}.so"


def compile_library(out: Path, source: Path, args: list[str], what: str) -> Path:
    """`out`, compiled from `source` with FLAGS and `args` (include and link options). One-line EdgedfError when it
    cannot be built; never a half-written library (the build goes to a temporary file, renamed when done)."""
    if not sys.platform.startswith("linux"):
        raise EdgedfError(f"{what} builds on Linux only (this is {sys.platform})")
    cxx = compiler()
    if cxx is None:
        raise EdgedfError(f"no C++ compiler found to build {what} (install g++, or set CXX)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".so.tmp", dir=out.parent)
    os.close(fd)
    # -I NATIVE: a kernel source from elsewhere (benchmarks' older versions) still finds the core
    cmd = [cxx, *FLAGS, f"-I{NATIVE}", str(source), "-o", tmp, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip()[:200])
            raise EdgedfError(f"building {what} failed ({cxx}): {first}")
        os.replace(tmp, out)  # atomic: a concurrent build or a crash never leaves a half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def cpu_path(lib: Path) -> str:
    """Which kernel the library runs on this CPU: amx-int8, avx512-vnni, avx-vnni, avx2 or scalar."""
    fn = ctypes.CDLL(str(lib)).edgedf_ternary_isa
    fn.restype = ctypes.c_char_p
    return fn().decode()
