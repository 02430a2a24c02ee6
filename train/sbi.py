"""Self-blended images (SBI; Shiohara & Yamasaki, CVPR 2022): pseudo-fakes made from real faces only.

A real face crop is blended with a transformed copy of itself: one of the two (source or target) gets
a colour transform (RGB shift, hue/saturation/value, brightness/contrast) and a frequency transform
(downscale-upscale blur or sharpening), the source is shifted and scaled slightly, and the two are mixed
through a soft face mask (elastically deformed, blurred twice, times a random blend ratio). The result
carries the generic traces of face swapping (a blending boundary, colour and frequency mismatch, a small
misregistration) without any fake data, so a detector trained on it generalises across manipulations.

How the mask differs from the paper: SBI takes the convex hull of dlib's 81 landmarks (68 plus 13 on the
forehead), randomly shrunk or cut ("hull types"). edgedf's runtime detector gives 5 landmarks (eyes, nose
tip, mouth corners), so the hull is built from an oval that those 5 points span: centred between the
eyes and the mouth, its horizontal semi-axis scales with the inter-ocular distance, its top reaches up
to the forehead and its bottom to the chin, in multiples of the eye-to-mouth distance, rotated with
the eye line. Random proportions (and the elastic deformation) stand in for the paper's hull types; the
oval is smoother than a landmark hull (no jaw corners), and for strong head poses it follows the face
less tightly, which the deformation and blur partly hide.

Everything works on uint8 BGR crops of any size (constants are relative to the crop size) and takes a
numpy Generator, so blends are reproducible from a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # as in the paper: full blends three times as often


@dataclass(frozen=True)
class SBIConfig:
    """Ranges of the random transforms; the defaults follow the paper's albumentations settings."""

    rgb_shift: float = 20.0  # per-channel shift, pixel values
    hue_shift: float = 0.3 * 180 / 20  # OpenCV hue units (0..180); the paper's HueSaturationValue(0.3, 0.3, 0.3)
    sat_shift: float = 0.3 * 255 / 10
    val_shift: float = 0.3 * 255 / 10
    brightness: float = 0.1
    contrast: float = 0.1
    translate_x: float = 0.03  # of the crop size
    translate_y: float = 0.015
    scale: float = 0.05  # source scaled by [1 - s, 1 / (1 - s)]
    elastic_alpha: float = 0.25  # displacement, in multiples of the crop size before smoothing
    elastic_sigma: float = 7 / 256  # smoothing of the displacement field, of the crop size


def face_hull_points(lm5: np.ndarray, rng: np.random.Generator, n: int = 24) -> np.ndarray:
    """Points of a face oval spanned by 5 landmarks (left eye, right eye, nose, left mouth, right mouth)."""
    lm = np.asarray(lm5, np.float64).reshape(5, 2)
    eye_c = (lm[0] + lm[1]) / 2
    mouth_c = (lm[3] + lm[4]) / 2
    across = lm[1] - lm[0]
    w = max(np.linalg.norm(across), 1.0)
    ux = across / w
    down = mouth_c - eye_c
    d = max(np.linalg.norm(down), 1.0)
    uy = down / d
    # proportions drawn per blend (the template face: width ~2.2 w, forehead ~1 d above the eyes, chin ~0.5 d
    # below the mouth); smaller draws give inner-face masks as the paper's reduced hull types do
    half_w = rng.uniform(0.85, 1.2) * w
    top = rng.uniform(0.5, 1.1) * d
    chin = rng.uniform(0.3, 0.65) * d
    center_y = (chin + d - top) / 2  # along uy from the eye centre
    half_h = (chin + d + top) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = eye_c + np.outer(np.cos(t) * half_w, ux) + np.outer(center_y + np.sin(t) * half_h, uy)
    return pts.astype(np.float32)


def hull_mask(lm5: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Binary float32 mask [H, W] of the face oval's convex hull."""
    mask = np.zeros(shape, np.float32)
    pts = face_hull_points(lm5, rng)
    cv2.fillConvexPoly(mask, np.round(cv2.convexHull(pts)).astype(np.int32), 1.0)
    return mask


def elastic(mask: np.ndarray, rng: np.random.Generator, cfg: SBIConfig) -> np.ndarray:
    h, w = mask.shape
    size = max(h, w)
    sigma = max(cfg.elastic_sigma * size, 1.0)
    dx = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma)
    dy = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma)
    # normalise the smoothed field so the displacement does not vanish with large sigma
    scale = cfg.elastic_alpha * size / max(float(np.abs(np.concatenate([dx, dy])).max()), 1e-6) * 0.1
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(mask, gx + dx * scale, gy + dy * scale, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _odd(k: float) -> int:
    k = max(int(round(k)), 1)
    return k if k % 2 else k + 1


def blend_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The paper's get_blend_mask at crop scale: blur, keep the core, blur again -> soft mask in [0, 1]."""
    h, w = mask.shape
    f = max(h, w) / 256  # the paper works at 192..256 px
    k1, k2 = _odd(rng.integers(5, 26) * f), _odd(rng.integers(5, 26) * f)
    m = cv2.GaussianBlur(mask, (k1, k1), 0)
    if m.max() <= 0:
        return m
    m = m / m.max()
    m[m < 1] = 0  # erodes the mask by about k1 / 2 pixels
    if m.max() <= 0:  # a tiny face: keep the blurred mask instead of nothing
        m = cv2.GaussianBlur(mask, (k1, k1), 0)
    m = cv2.GaussianBlur(m, (k2, k2), float(rng.integers(5, 46)) * f)
    return m / max(float(m.max()), 1e-6)


def color_transform(img: np.ndarray, rng: np.random.Generator, cfg: SBIConfig, strength: float = 1.0) -> np.ndarray:
    """RGB shift, HSV shift, brightness/contrast (each applied with probability 0.3 as in the paper)."""
    x = img.astype(np.float32)
    s = strength
    applied = False
    if rng.random() < 0.3:
        x += rng.uniform(-cfg.rgb_shift, cfg.rgb_shift, 3).astype(np.float32) * s
        applied = True
    if rng.random() < 0.3:
        hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-cfg.hue_shift, cfg.hue_shift) * s) % 180
        hsv[..., 1] += rng.uniform(-cfg.sat_shift, cfg.sat_shift) * s
        hsv[..., 2] += rng.uniform(-cfg.val_shift, cfg.val_shift) * s
        x = cv2.cvtColor(np.clip(hsv, 0, [179, 255, 255]).astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
        applied = True
    if rng.random() < 0.3 or not applied:  # at least one colour change, so every blend differs in colour
        a = 1 + rng.uniform(-cfg.contrast, cfg.contrast) * s
        b = rng.uniform(-cfg.brightness, cfg.brightness) * 255 * s
        x = (x - x.mean()) * a + x.mean() + b
    return np.clip(x, 0, 255)


def frequency_transform(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Downscale-and-upscale (blur) or sharpen, one of the two (the paper's OneOf(Downscale, Sharpen))."""
    h, w = img.shape[:2]
    if rng.random() < 0.5:
        f = rng.uniform(0.25, 0.5)
        small = cv2.resize(img, (max(int(w * f), 1), max(int(h * f), 1)), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    alpha = rng.uniform(0.2, 0.5)
    blur = cv2.GaussianBlur(img, (0, 0), 1.0)
    return np.clip(img + alpha * (img - blur), 0, 255)


def random_affine(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: SBIConfig):
    """Shift and scale the source (and its mask) slightly about the crop centre."""
    h, w = img.shape[:2]
    s = rng.uniform(1 - cfg.scale, 1 / (1 - cfg.scale))
    tx = rng.uniform(-cfg.translate_x, cfg.translate_x) * w
    ty = rng.uniform(-cfg.translate_y, cfg.translate_y) * h
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, s)
    m[:, 2] += (tx, ty)
    img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    mask = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return img, mask


def self_blend(
    img: np.ndarray,
    lm5: np.ndarray,
    rng: np.random.Generator,
    cfg: SBIConfig | None = None,
    strength: float = 1.0,
    ratios: tuple[float, ...] = BLEND_RATIOS,
) -> tuple[np.ndarray, np.ndarray]:
    """One self-blended image from a uint8 crop [H, W, 3] and its 5 landmarks (crop pixel coordinates).

    Returns the uint8 blend and the float32 blend mask [H, W] (mask * ratio, what was mixed in).
    `strength` scales the colour transform (a curriculum can start above 1 for easier blends);
    `ratios` are the blend ratios drawn from.
    """
    cfg = cfg or SBIConfig()
    h, w = img.shape[:2]
    base = img.astype(np.float32)
    source, target = base.copy(), base.copy()
    # the paper transforms either the source or the target, with equal chance
    if rng.random() < 0.5:
        source = frequency_transform(color_transform(source, rng, cfg, strength), rng)
    else:
        target = frequency_transform(color_transform(target, rng, cfg, strength), rng)
    mask = elastic(hull_mask(lm5, (h, w), rng), rng, cfg)
    source, mask = random_affine(source, mask, rng, cfg)
    m = blend_mask(mask, rng) * float(ratios[rng.integers(len(ratios))])
    out = m[..., None] * source + (1 - m[..., None]) * target
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), m.astype(np.float32)
