import numpy as np
import pytest

from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.fsutil import atomic_dir, atomic_write_json, sha256_file
from edgedf.runtime.spec import FaceCropSpec


def test_roundtrip_dict_and_json():
    spec = FaceCropSpec(input_size=112, crop_scale=1.25, color="BGR")
    assert FaceCropSpec.from_dict(spec.to_dict()) == spec
    assert FaceCropSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    "bad",
    [
        {"alignment": "eyes"},
        {"color": "YUV"},
        {"input_size": 8},
        {"crop_scale": 9.0},
        {"std": [0.0, 1.0, 1.0]},
        {"version": 99},
        {"interpolation": "nearest"},
        {"what": 1},
    ],
)
def test_invalid_specs(bad):
    with pytest.raises(EdgedfError, match="invalid preprocessing spec"):
        FaceCropSpec.from_dict({**FaceCropSpec().to_dict(), **bad})


def test_from_json_not_json():
    with pytest.raises(EdgedfError, match="not JSON"):
        FaceCropSpec.from_json("{")


def test_to_input_normalises_and_reorders():
    spec = FaceCropSpec(input_size=16, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    bgr = np.zeros((2, 16, 16, 3), np.uint8)
    bgr[..., 0] = 255  # blue
    x = spec.to_input(bgr, crops_color="BGR")
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[:, 0], (0 - 0.5) / 0.5)  # R
    np.testing.assert_allclose(x[:, 1], (0 - 0.25) / 0.25)  # G
    np.testing.assert_allclose(x[:, 2], (1.0 - 0.0) / 1.0)  # B
    x_rgb = spec.to_input(bgr[..., ::-1].copy(), crops_color="RGB")
    np.testing.assert_array_equal(x, x_rgb)


def test_to_input_rejects_wrong_crops():
    spec = FaceCropSpec(input_size=16)
    with pytest.raises(EdgedfError, match="16px"):
        spec.to_input(np.zeros((1, 5, 5, 3), np.uint8))
    with pytest.raises(EdgedfError, match="uint8"):
        spec.to_input(np.zeros((1, 16, 16, 3), np.float32))
    with pytest.raises(EdgedfError, match="shape"):
        spec.to_input(np.zeros((4, 4), np.uint8))


def test_atomic_dir(tmp_path):
    with atomic_dir(tmp_path / "b") as d:
        atomic_write_json(d / "m.json", {"a": 1})
    assert (tmp_path / "b" / "m.json").read_text().strip().startswith("{")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "c") as d:
        (d / "x").write_text("partial")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    with pytest.raises(EdgedfError, match="already exists"), atomic_dir(tmp_path / "b"):
        pass
    with atomic_dir(tmp_path / "b", overwrite=True) as d:
        (d / "new").write_text("1")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert len(sha256_file(tmp_path / "b" / "new")) == 64
