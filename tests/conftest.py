"""Fixtures shared by the runtime and export tests."""

import os

import pytest


@pytest.fixture(scope="session")
def native_kernel(tmp_path_factory):
    """edgedf's OpenVINO TernaryLinear kernel, built for this session from the installed package's source into a
    fresh cache (so a stale build is never what gets tested). Skips only where there is no C++ compiler."""
    pytest.importorskip("openvino")
    from edgedf.runtime.backends import native_build, ov_native

    if native_build.compiler() is None:
        pytest.skip("no C++ compiler to build the native kernel")
    os.environ["EDGEDF_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    ov_native.extension.cache_clear()
    yield ov_native.extension()
    ov_native.extension.cache_clear()


@pytest.fixture(scope="session")
def ort_native_lib(tmp_path_factory):
    """edgedf's ONNX Runtime TernaryLinear op, built for this session from the installed package's source into a
    fresh cache. Skips only where there is no C++ compiler."""
    from edgedf.runtime.backends import native_build, ort_native

    if native_build.compiler() is None:
        pytest.skip("no C++ compiler to build the native kernel")
    os.environ["EDGEDF_CACHE_DIR"] = str(tmp_path_factory.mktemp("ort_cache"))
    ort_native.library.cache_clear()
    yield ort_native.library()
    ort_native.library.cache_clear()
