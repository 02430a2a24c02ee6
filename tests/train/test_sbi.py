import numpy as np
import pytest
from traindata import face_image

from edgedf.runtime.align import align_face, template_points
from edgedf.runtime.detect import open_detector
from edgedf.runtime.spec import FaceCropSpec
from edgedf.train.sbi import (
    HULL_TYPES,
    SBIConfig,
    blend_mask,
    frequency_transform,
    hull_mask,
    post_blend,
    self_blend,
)

SPEC = FaceCropSpec(input_size=112)
LM = template_points(SPEC).astype(np.float32)


def crop_and_landmarks():
    """A real crop made by the runtime's detector and aligner, and its landmarks in crop pixels."""
    img = face_image(0, size=256)
    faces = open_detector("retinaface").detect(img)
    assert len(faces) == 1
    crop = align_face(img, faces.landmarks[0], SPEC)
    return crop, LM


def _convex_area(mask: np.ndarray) -> float:
    import cv2

    pts = cv2.findNonZero((mask > 0).astype(np.uint8))
    return float(cv2.contourArea(cv2.convexHull(pts)))


@pytest.mark.parametrize("kind", HULL_TYPES)
def test_every_hull_type_covers_the_face_not_the_border(kind):
    rng = np.random.default_rng(0)
    for _ in range(10):
        m = hull_mask(LM, (112, 112), rng, kind)
        for x, y in np.round(LM).astype(int):  # eyes, nose and mouth lie inside
            assert m[y, x] == 1, kind
        assert m[:2].sum() == 0 and m[:, :2].sum() == 0 and m[:, -2:].sum() == 0
        assert 0.12 < m.mean() < 0.6


def test_hull_types_differ_as_the_papers_do():
    rng = lambda: np.random.default_rng(3)  # noqa: E731 - the same jitter for each type
    full, ext = hull_mask(LM, (112, 112), rng(), "dfl_full"), hull_mask(LM, (112, 112), rng(), "extended")
    brow_y = int(LM[:2, 1].min()) - 12  # above the brows: the forehead
    assert ext[:brow_y].sum() > full[:brow_y].sum() + 50  # extended reaches up into the forehead
    comp = hull_mask(LM, (112, 112), rng(), "components")
    assert comp.sum() < 0.97 * _convex_area(comp)  # a union of parts: not convex
    assert full.sum() > 0.97 * _convex_area(full)


def test_hull_mask_follows_the_landmarks():
    rot = np.stack([112 - LM[:, 1], LM[:, 0]], axis=1)  # the face turned by 90 degrees
    m = hull_mask(rot, (112, 112), np.random.default_rng(1), "dfl_full")
    for x, y in np.round(rot).astype(int):
        assert m[y, x] == 1


def test_blend_mask_is_soft_and_inside():
    # catches an inverted mask (high at the border) and a hard, unblurred one
    rng = np.random.default_rng(0)
    soft = []
    for _ in range(20):
        b = blend_mask(hull_mask(LM, (112, 112), rng), rng)
        assert abs(b.max() - 1) < 1e-5
        nose = np.round(LM[2]).astype(int)
        assert b[nose[1], nose[0]] > 0.9
        assert b[0, 0] < 0.05 and b[-1, -1] < 0.05 and b[0, -1] < 0.05
        soft.append(((b > 0.05) & (b < 0.95)).sum())
    # a soft edge of a few pixels on average (kernels 5..25 at 192..256 px): ~1200 pixels of 12544 here;
    # a hard mask shows only the resizes' 1-pixel interpolation edge (~270)
    assert np.mean(soft) > 700


def test_blend_ratio_varies_over_the_papers_values():
    crop, lm = crop_and_landmarks()
    peaks = {round(float(self_blend(crop, lm, np.random.default_rng(s))[1].max()), 2) for s in range(40)}
    assert {0.25, 0.5, 0.75, 1.0} <= peaks


def test_only_one_of_source_and_target_is_transformed():
    # a flat image: shifts, blur and sharpening change nothing, so any difference between the face and
    # the border comes from the colour transform having hit one side only; transforming both alike
    # would leave inside == outside
    flat = np.full((112, 112, 3), 128, np.uint8)
    gaps = []
    for s in range(20):
        out, m = self_blend(flat, LM, np.random.default_rng(s))
        inside, outside = m > 0.95 * m.max(), m < 0.01
        gaps.append(np.abs(out[inside].astype(float).mean(0) - out[outside].astype(float).mean(0)).max())
    assert np.mean(np.array(gaps) > 2) > 0.8


def test_self_blend_is_reproducible_and_changes_the_face():
    crop, lm = crop_and_landmarks()
    for seed in range(4):
        fake, m = self_blend(crop, lm, np.random.default_rng(seed))
        again, _ = self_blend(crop, lm, np.random.default_rng(seed))
        assert np.array_equal(fake, again)
        assert fake.shape == crop.shape and fake.dtype == np.uint8
        diff = np.abs(fake.astype(int) - crop.astype(int)).sum(-1)
        assert diff.mean() > 1.0
        assert m.max() <= 1.0 and m.min() >= 0.0


def test_official_downscale_is_by_two_or_four_with_nearest():
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.float32)
    seen = set()
    for s in range(30):
        out = frequency_transform(img, np.random.default_rng(s))
        # a nearest 1/r downscale then linear upscale keeps the exact value of sampled pixels
        for r in (2, 4):
            small = img[::r, ::r]
            if np.corrcoef(out[r // 2 :: r, r // 2 :: r].ravel(), small.ravel())[0, 1] > 0.5:
                seen.add(r)
    assert seen == {2, 4}


def test_post_blend_gives_a_pair_the_same_draw():
    crop, lm = crop_and_landmarks()
    fake, _ = self_blend(crop, lm, np.random.default_rng(0))
    changed = 0
    for s in range(10):
        a, b = post_blend([crop, crop.copy()], np.random.default_rng(s), SBIConfig())
        assert np.array_equal(a, b)  # the same transform on both images of a pair
        r, f = post_blend([crop, fake], np.random.default_rng(s))
        changed += int(np.abs(r.astype(int) - crop.astype(int)).mean() > 0.5)
    assert changed >= 4  # and it does transform (JPEG p 0.5, colour p 0.3 each)
