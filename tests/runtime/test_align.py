import cv2
import numpy as np
import pytest

from edgedf.runtime.align import (
    ARCFACE_TEMPLATE_112,
    align_face,
    align_faces,
    as_bgr8,
    similarity_transform,
    template_points,
)
from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.spec import FaceCropSpec


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    a = np.deg2rad(17.0)
    r = 1.7 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = src @ r.T + [12.0, -5.0]
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], r, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], [12.0, -5.0], atol=1e-9)


def test_degenerate_landmarks_are_an_error():
    with pytest.raises(EdgedfError, match="degenerate"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE_112)


def test_template_respects_crop_scale_and_size():
    spec = FaceCropSpec(input_size=224, crop_scale=1.0)
    np.testing.assert_allclose(template_points(spec), ARCFACE_TEMPLATE_112 * 2)
    wide = template_points(FaceCropSpec(input_size=224, crop_scale=1.3))
    # widening shrinks the eye distance in the crop by exactly crop_scale
    d = lambda p: np.linalg.norm(p[0] - p[1])  # noqa: E731
    assert d(wide) == pytest.approx(d(template_points(spec)) / 1.3)


def test_landmarks_land_on_the_template():
    """Mark the 5 landmarks in a frame; after alignment the marks sit at the template points."""
    spec = FaceCropSpec(input_size=112, crop_scale=1.3)
    frame = np.zeros((400, 500, 3), np.uint8)
    a = np.deg2rad(20)
    r = 2.2 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    lm = ARCFACE_TEMPLATE_112 @ r.T + [180, 90]
    for x, y in lm:
        cv2.circle(frame, (int(round(x)), int(round(y))), 3, (255, 255, 255), -1)
    crop = align_face(frame, lm, spec)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for x, y in template_points(spec):
        assert crop[int(round(y)), int(round(x))].max() > 100


def test_reflect_border_no_black_padding():
    spec = FaceCropSpec(input_size=64, crop_scale=2.0)
    frame = np.full((60, 60, 3), 200, np.uint8)
    lm = ARCFACE_TEMPLATE_112 * 0.5  # face in the corner: the crop runs past the frame
    assert align_face(frame, lm, spec).min() == 200
    assert align_face(frame, lm, spec.replace(border="constant")).min() == 0


def test_box_alignment_and_batch_equals_single():
    img = np.random.default_rng(1).integers(0, 255, (200, 300, 3), np.uint8)
    spec = FaceCropSpec(input_size=32, alignment="box", crop_scale=1.0)
    box = np.array([100, 50, 132, 82], np.float32)  # 32 px box, crop_scale 1: exactly that patch
    np.testing.assert_array_equal(align_face(img, None, spec, box), img[50:82, 100:132])
    wide = align_face(img, None, spec.replace(crop_scale=2.0), box)  # twice the field of view, same centre
    np.testing.assert_allclose(wide[8:24, 8:24].mean(), cv2.resize(img[50:82, 100:132], (16, 16)).mean(), atol=6)
    spec5 = FaceCropSpec(input_size=48)
    lms = np.stack([ARCFACE_TEMPLATE_112 + [50, 20], ARCFACE_TEMPLATE_112 * 1.2 + [120, 40]])
    batch = align_faces(img, lms, spec5)
    assert batch.shape == (2, 48, 48, 3)
    np.testing.assert_array_equal(batch[1], align_face(img, lms[1], spec5))
    assert align_faces(img, np.zeros((0, 5, 2)), spec5).shape == (0, 48, 48, 3)


def test_gray_and_16bit_inputs():
    g16 = (np.arange(100 * 120, dtype=np.uint16).reshape(100, 120) * 5).astype(np.uint16)
    out = as_bgr8(g16)
    assert out.shape == (100, 120, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], (g16 >> 8).astype(np.uint8))
    bgra = np.zeros((10, 10, 4), np.uint8)
    assert as_bgr8(bgra).shape == (10, 10, 3)
    crop = align_face(g16, ARCFACE_TEMPLATE_112 * 0.6, FaceCropSpec(input_size=32))
    assert crop.shape == (32, 32, 3)
    with pytest.raises(EdgedfError, match="5 landmarks"):
        align_face(out, np.zeros((4, 2)), FaceCropSpec(input_size=32))
