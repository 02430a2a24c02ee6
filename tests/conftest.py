"""Fixtures shared by the runtime and export tests."""

import os

import pytest


@pytest.fixture(scope="session")
def native_kernel(tmp_path_factory):
    """edgedf's OpenVINO TernaryLinear kernel, built for this session from the installed package's source into a
    fresh cache (so a stale build is never what gets tested). Skips only where there is no C++ compiler."""
    pytest.importorskip("openvino")
    from edgedf.runtime.backends import ov_native

    if ov_native._compiler() is None:
        pytest.skip("no C++ compiler to build the native kernel")
    os.environ["EDGEDF_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    ov_native.extension.cache_clear()
    yield ov_native.extension()
    ov_native.extension.cache_clear()
