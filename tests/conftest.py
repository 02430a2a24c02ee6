"""Fixtures shared by the runtime and export tests."""

import os

import pytest


@pytest.fixture(scope="session")
def native_cache(tmp_path_factory):
    """A fresh cache for edgedf's native kernels, this session's builds only (so a stale build is never what gets
    tested). Skips only where there is no C++ compiler."""
    from edgedf.runtime.backends import native_build

    if native_build.compiler() is None:
        pytest.skip("no C++ compiler to build the native kernel")
    os.environ["EDGEDF_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def native_kernel(native_cache):
    """edgedf's OpenVINO TernaryLinear kernel, built for this session from the installed package's source."""
    pytest.importorskip("openvino")
    from edgedf.runtime.backends import ov_native

    ov_native.extension.cache_clear()
    yield ov_native.extension()
    ov_native.extension.cache_clear()


@pytest.fixture(scope="session")
def ort_native_lib(native_cache):
    """edgedf's ONNX Runtime TernaryLinear op, built for this session from the installed package's source."""
    from edgedf.runtime.backends import ort_native

    ort_native.library.cache_clear()
    yield ort_native.library()
    ort_native.library.cache_clear()
