import numpy as np
from traindata import face_image

from edgedf.runtime.align import align_face, template_points
from edgedf.runtime.detect import open_detector
from edgedf.runtime.spec import FaceCropSpec
from edgedf.train.sbi import blend_mask, face_hull_points, hull_mask, self_blend

SPEC = FaceCropSpec(input_size=112)


def crop_and_landmarks():
    """A real crop made by the runtime's detector and aligner, and its landmarks in crop pixels."""
    img = face_image(0, size=256)
    faces = open_detector("retinaface").detect(img)
    assert len(faces) == 1
    crop = align_face(img, faces.landmarks[0], SPEC)
    return crop, template_points(SPEC).astype(np.float32)


def test_hull_mask_covers_the_face_not_the_border():
    lm = template_points(SPEC)
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = hull_mask(lm, (112, 112), rng)
        for x, y in np.round(lm).astype(int):  # eyes, nose and mouth lie inside
            assert m[y, x] == 1
        assert m[:3].sum() == 0 and m[-2:].sum() == 0 and m[:, :2].sum() == 0 and m[:, -2:].sum() == 0
        assert 0.15 < m.mean() < 0.6
    # the oval turns with the face: rotate the landmarks 90 degrees, the oval's long axis follows
    rot = np.stack([112 - lm[:, 1], lm[:, 0]], axis=1)
    pts = face_hull_points(rot, np.random.default_rng(1))
    assert np.ptp(pts[:, 0]) > np.ptp(pts[:, 1])


def test_blend_mask_is_soft_and_inside():
    rng = np.random.default_rng(0)
    m = hull_mask(template_points(SPEC), (112, 112), rng)
    b = blend_mask(m, rng)
    assert b.max() == np.float32(1.0) or abs(b.max() - 1) < 1e-5
    assert ((b > 0.02) & (b < 0.98)).sum() > 100  # a soft edge, not a hard cut
    assert b[0, 0] < 0.05 and b[-1, -1] < 0.05


def test_self_blend_is_a_pseudo_fake_of_the_same_face():
    crop, lm = crop_and_landmarks()
    for seed in range(6):
        fake, m = self_blend(crop, lm, np.random.default_rng(seed))
        again, _ = self_blend(crop, lm, np.random.default_rng(seed))
        assert np.array_equal(fake, again)  # reproducible from a seed
        assert fake.shape == crop.shape and fake.dtype == np.uint8
        diff = np.abs(fake.astype(int) - crop.astype(int)).sum(-1)
        assert diff.mean() > 1.0  # something changed...
        inside, outside = m > 0.5 * m.max(), m < 0.01 * m.max()
        # ...and either only inside the mask (the source was transformed) or everywhere but differently
        # inside and outside (the target was); the face region always differs from the border region
        assert abs(diff[inside].mean() - diff[outside].mean()) > 0.5
        assert m.max() <= 1.0 and m.min() >= 0.0
