import pytest

from edgedf.devices.profiles import PRECISIONS, PROFILES, get_profile
from edgedf.runtime.errors import EdgedfError


def test_the_five_targets():
    assert set(PROFILES) == {"jetson", "cpu", "rpi", "rpi4", "ort"}
    assert get_profile("jetson").backend == "tensorrt"
    assert get_profile("cpu").backend == "openvino"
    assert {get_profile(n).backend for n in ("rpi", "rpi4", "ort")} == {"ort"}
    for p in PROFILES.values():
        assert set(p.precisions) <= set(PRECISIONS) and p.why and p.ternary_lowering
        assert p.default_precision("bit") == "ternary"


def test_ternary_lowerings_are_ones_export_knows():
    from edgedf.export.lowering import CHOICES

    for p in PROFILES.values():
        assert p.ternary_lowering in CHOICES and p.ternary_lowering_avx2 in (None, *CHOICES)
    # the native kernel is an OpenVINO op: only the OpenVINO target may fall back to it
    assert {p.name for p in PROFILES.values() if p.ternary_lowering_avx2 == "native"} == {"cpu"}


def test_unknown_target():
    with pytest.raises(EdgedfError, match="unknown target 'tpu'"):
        get_profile("tpu")


def test_precision_rules():
    jetson, rpi = get_profile("jetson"), get_profile("rpi")
    jetson.check_precision("fp16", "fp")
    rpi.check_precision("int8-ptq", "fp")
    with pytest.raises(EdgedfError, match="cannot do fp16"):
        rpi.check_precision("fp16", "fp")
    with pytest.raises(EdgedfError, match="needs a BitLinear"):
        rpi.check_precision("ternary", "fp")
    with pytest.raises(EdgedfError, match="applies to full-precision"):
        rpi.check_precision("int8-qat", "bit")
    with pytest.raises(EdgedfError, match="unknown precision"):
        rpi.check_precision("int3", "fp")
