"""Face alignment and cropping by the preprocessing spec.

This is the one place a face crop is made: the runtime calls it on video frames, and the training code
calls the very same functions to make training crops, so the classifier sees at run time exactly the
crops it was trained on.

`arcface5` (the default): the 5 detector landmarks (left eye, right eye, nose, left and right mouth
corner, as seen in the image) are mapped by a least-squares similarity transform (Umeyama) onto the
ArcFace 112-px template; the template is shrunk towards its centre by `crop_scale`, so the crop shows
`crop_scale` times the template's field of view (face outline plus some background); the result is
`input_size` square. `box`: the detector box, squared around its centre and widened by `crop_scale`,
no rotation. Pixels outside the frame are filled by the spec's border mode (reflect by default).
"""

from __future__ import annotations

import cv2
import numpy as np

from .errors import EdgedfError
from .spec import FaceCropSpec

# ArcFace / insightface 112x112 template (x, y): left eye, right eye, nose tip, left and right mouth corner.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

_INTERP = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}
_BORDER = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}


def template_points(spec: FaceCropSpec) -> np.ndarray:
    """Where the 5 landmarks land in the output crop: the ArcFace template widened by crop_scale."""
    centre = 56.0
    pts = (ARCFACE_TEMPLATE_112 - centre) / float(spec.crop_scale) + centre
    return pts * (spec.input_size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst (Umeyama 1991).

    Returns the 2x3 affine matrix. Deterministic (no RANSAC), so training and runtime crops agree.
    """
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s < 1e-12:
        raise EdgedfError("degenerate landmarks: all five points coincide")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    r = u @ sign @ vt
    scale = (sig * np.diag(sign)).sum() / var_s
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def box_transform(box: np.ndarray, spec: FaceCropSpec) -> np.ndarray:
    """2x3 affine matrix for `box` alignment: the square around the box centre, widened by crop_scale."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(4))
    side = max(x2 - x1, y2 - y1, 1.0) * float(spec.crop_scale)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    s = spec.input_size / side
    return np.array([[s, 0.0, spec.input_size / 2 - s * cx], [0.0, s, spec.input_size / 2 - s * cy]])


def as_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, BGRA, 16-bit, float in [0, 1]) -> uint8 BGR [H, W, 3]."""
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise EdgedfError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise EdgedfError(f"unsupported image shape {img.shape}")


def crop_transform(landmarks5: np.ndarray | None, spec: FaceCropSpec, box: np.ndarray | None = None) -> np.ndarray:
    """The 2x3 matrix mapping frame pixels to crop pixels for one face."""
    if spec.alignment == "arcface5":
        if landmarks5 is None:
            raise EdgedfError("arcface5 alignment needs 5 landmarks")
        lm = np.asarray(landmarks5, np.float64).reshape(-1, 2)
        if lm.shape != (5, 2):
            raise EdgedfError(f"expected 5 landmarks, got {lm.shape[0]}")
        return similarity_transform(lm, template_points(spec))
    if box is None:
        raise EdgedfError("box alignment needs the detector box")
    return box_transform(box, spec)


def align_face(
    image_bgr: np.ndarray, landmarks5: np.ndarray | None, spec: FaceCropSpec, box: np.ndarray | None = None
) -> np.ndarray:
    """One face crop: uint8 [S, S, 3] BGR, S = spec.input_size.

    image_bgr: the frame as OpenCV gives it (gray or 16-bit images are converted first);
    landmarks5: [5, 2] pixel coordinates (x, y) in the order of ARCFACE_TEMPLATE_112;
    box: [x1, y1, x2, y2], needed only for spec.alignment == "box".
    """
    img = as_bgr8(image_bgr)
    m = crop_transform(landmarks5, spec, box)
    s = spec.input_size
    return cv2.warpAffine(
        img, m, (s, s), flags=_INTERP[spec.interpolation], borderMode=_BORDER[spec.border], borderValue=(0, 0, 0)
    )


def align_faces(
    image_bgr: np.ndarray, landmarks: np.ndarray | None, spec: FaceCropSpec, boxes: np.ndarray | None = None
) -> np.ndarray:
    """All faces of one frame: landmarks [N, 5, 2] (boxes [N, 4] for box alignment) -> uint8 [N, S, S, 3]."""
    img = as_bgr8(image_bgr)
    n = len(landmarks) if landmarks is not None else (len(boxes) if boxes is not None else 0)
    out = np.empty((n, spec.input_size, spec.input_size, 3), np.uint8)
    for i in range(n):
        out[i] = align_face(img, None if landmarks is None else landmarks[i], spec, None if boxes is None else boxes[i])
    return out
