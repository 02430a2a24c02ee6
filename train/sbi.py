"""Self-blended images (SBI; Shiohara & Yamasaki, CVPR 2022): pseudo-fakes made from real faces only.

A real face crop is blended with a transformed copy of itself: one of the two (source or target) gets
a colour transform (RGB shift, hue/saturation/value, brightness/contrast) and a frequency transform
(downscale-upscale blur or sharpening), the source is shifted and scaled slightly, and the two are mixed
through a soft face mask (elastically deformed, blurred twice, times a random blend ratio). The result
carries the generic traces of face swapping (a blending boundary, colour and frequency mismatch, a small
misregistration) without any fake data, so a detector trained on it generalises across manipulations.

Following the official code (mapooon/SelfBlendedImages, `src/utils/sbi.py`, `blend.py`, the face-x-ray
`DeepFakeMask.py` hull types):
- one of source or target (chance 1/2 each) gets the source transform: RGB shift (p 0.3), HSV shift
  (p 1), brightness/contrast +-0.1 (p 1), then one of RandomDownScale (x1/2 or x1/4, nearest down,
  linear up) or Sharpen;
- the source and its mask are shifted (+-3 % x, +-1.5 % y) and scaled (0.95..1/0.95), the mask is
  elastically deformed;
- the mask is one of four hull types, chosen uniformly: `dfl_full` (jaw, brows, nose), `extended`
  (the brows raised: forehead included), `components` (a union of part hulls: not convex), `facehull`
  (every landmark);
- the mask is blurred, its core kept and blurred again (kernels 5..25, sigma 5..45 at 256 px), times a
  blend ratio from (0.25, 0.5, 0.75, 1, 1, 1);
- `post_blend` then applies the same random augmentation to the real image and its blend (RGB shift,
  HSV, brightness/contrast +-0.3, each p 0.3; JPEG quality 40..100, p 0.5), as the paper's
  `get_transforms` with `additional_targets` does: the pair stays different only by the blend.

Dense landmarks: the paper uses dlib's 68 (81) points. edgedf's runtime detector gives 5, so the
dense points here are a 60-point mean face (jaw, brows, nose, eyes, mouth, in ArcFace-template
coordinates) mapped onto each face by the similarity transform its 5 points define, with per-point
jitter. What is lost: the jaw line, brows and mouth do not follow the individual face shape,
expression or strong head pose (a similarity transform only rotates and scales); the elastic
deformation and the blur hide part of that, but masks of turned faces fit less tightly than dlib's.

Everything works on uint8 BGR crops of any size (constants are relative to the crop size) and takes a
numpy Generator, so blends are reproducible from a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgedf.runtime.align import ARCFACE_TEMPLATE_112, similarity_transform

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # as in the paper: full blends three times as often
HULL_TYPES = ("dfl_full", "extended", "components", "facehull")


@dataclass(frozen=True)
class SBIConfig:
    """Ranges of the random transforms; the defaults are the official code's albumentations settings."""

    rgb_shift: float = 20.0  # per-channel shift, pixel values
    hue_shift: float = 0.3 * 180 / 20  # OpenCV hue units (0..180)
    sat_shift: float = 0.3 * 255 / 10
    val_shift: float = 0.3 * 255 / 10
    brightness: float = 0.1  # source transform; post_blend uses post_brightness / post_contrast
    contrast: float = 0.1
    post_brightness: float = 0.3
    post_contrast: float = 0.3
    jpeg_quality: tuple[int, int] = (40, 100)
    translate_x: float = 0.03  # of the crop size
    translate_y: float = 0.015
    scale: float = 0.05  # source scaled by [1 - s, 1 / (1 - s)]
    elastic_alpha: float = 0.25  # displacement, in multiples of the crop size before smoothing
    elastic_sigma: float = 7 / 256  # smoothing of the displacement field, of the crop size


# ---------------------------------------------------------------- dense mean face (ArcFace 112 px space)


def _mean_face() -> dict[str, np.ndarray]:
    t = np.linspace(np.pi, 0, 17)
    jaw = np.stack([56 + 38 * np.cos(t), 50 + 67 * np.sin(t)], 1)  # ear (eye level) - chin - ear
    brow_l = np.array([[26, 43], [31, 39], [37, 37], [43, 37], [50, 39]], float)
    brow_r = np.stack([112 - brow_l[::-1, 0], brow_l[::-1, 1]], 1)
    ridge = np.array([[56, 48], [56, 56], [56, 63], [56, 70]], float)
    nostrils = np.array([[47, 76], [51, 78], [56, 79], [61, 78], [65, 76]], float)
    eye_off = np.array([[-8, 0], [-4, -3], [3, -3], [8, 0], [3, 3], [-4, 3]], float)
    eye_l, eye_r = ARCFACE_TEMPLATE_112[0] + eye_off, ARCFACE_TEMPLATE_112[1] + eye_off
    a = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    mouth = np.stack([56 + 15.5 * np.cos(a), 92.5 + 6.5 * np.sin(a)], 1)
    return dict(jaw=jaw, brow_l=brow_l, brow_r=brow_r, ridge=ridge, nostrils=nostrils, eye_l=eye_l, eye_r=eye_r,
                mouth=mouth)  # fmt: skip


MEAN_FACE = _mean_face()


def dense_landmarks(lm5: np.ndarray, rng: np.random.Generator, jitter: float = 1.0) -> dict[str, np.ndarray]:
    """The mean face's parts mapped onto a face by its 5 landmarks, each point jittered (template px)."""
    m = similarity_transform(ARCFACE_TEMPLATE_112, np.asarray(lm5, np.float64).reshape(5, 2))
    out = {}
    for name, pts in MEAN_FACE.items():
        p = pts + rng.normal(0, jitter, pts.shape)
        out[name] = p @ m[:, :2].T + m[:, 2]
    return out


def _hull(mask: np.ndarray, pts: np.ndarray) -> None:
    cv2.fillConvexPoly(mask, np.round(cv2.convexHull(pts.astype(np.float32))).astype(np.int32), 1.0)


def hull_mask(
    lm5: np.ndarray, shape: tuple[int, int], rng: np.random.Generator, hull_type: str | None = None
) -> np.ndarray:
    """Binary float32 mask [H, W] of one of the paper's hull types (drawn uniformly unless given)."""
    d = dense_landmarks(lm5, rng)
    kind = hull_type or HULL_TYPES[int(rng.integers(len(HULL_TYPES)))]
    mask = np.zeros(shape, np.float32)
    brows = np.concatenate([d["brow_l"], d["brow_r"]])
    if kind == "dfl_full":
        _hull(mask, np.concatenate([d["jaw"], brows, d["ridge"]]))
    elif kind == "extended":  # brows pushed up by their distance to the eyes' centre line: forehead in
        eyes_c = (d["eye_l"].mean(0) + d["eye_r"].mean(0)) / 2
        up = brows.mean(0) - eyes_c
        _hull(mask, np.concatenate([d["jaw"], brows + 1.5 * up, d["ridge"]]))
    elif kind == "components":  # as DeepFakeMask's: cheeks, jaw halves, eyes+brows, nose; not convex
        chin, jaw = d["jaw"][8:9], d["jaw"]
        nose = np.concatenate([d["ridge"], d["nostrils"]])
        for part in (
            np.concatenate([jaw[:9], d["nostrils"][2:3]]),
            np.concatenate([jaw[8:], d["nostrils"][2:3]]),
            np.concatenate([d["brow_l"][:3], chin]),
            np.concatenate([d["brow_r"][2:], chin]),
            np.concatenate([d["brow_l"], d["ridge"][:1], d["eye_l"], chin]),
            np.concatenate([d["brow_r"], d["ridge"][:1], d["eye_r"], chin]),
            nose,
        ):
            _hull(mask, part)
    elif kind == "facehull":
        _hull(mask, np.concatenate(list(d.values())))
    else:
        raise ValueError(f"unknown hull type {kind!r}; choose from {HULL_TYPES}")
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


def blend_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The paper's get_blend_mask: at a random 192..256 px size, blur (kernel 5..25), keep the core,
    blur again (kernel 5..25, sigma 5..45), back to the crop size -> soft mask in [0, 1]."""
    h, w = mask.shape
    sw, sh = int(rng.integers(192, 257)), int(rng.integers(192, 257))
    m = cv2.resize(mask, (sw, sh))
    k1, k2 = int(rng.choice(np.arange(5, 26, 2))), int(rng.choice(np.arange(5, 26, 2)))
    b = cv2.GaussianBlur(m, (k1, k1), 0)
    if b.max() <= 0:
        return np.zeros((h, w), np.float32)
    b = b / b.max()
    b[b < 1] = 0  # erodes the mask by about k1 / 2 pixels
    if b.max() <= 0:  # a tiny face: keep the blurred mask instead of nothing
        b = cv2.GaussianBlur(m, (k1, k1), 0)
    b = cv2.GaussianBlur(b, (k2, k2), float(rng.integers(5, 46)))
    b = b / max(float(b.max()), 1e-6)
    return np.clip(cv2.resize(b, (w, h)), 0, 1).astype(np.float32)


def color_transform(img: np.ndarray, rng: np.random.Generator, cfg: SBIConfig, strength: float = 1.0) -> np.ndarray:
    """The source transform's colour part: RGB shift (p 0.3), HSV shift (p 1), brightness/contrast (p 1)."""
    x = img.astype(np.float32)
    s = strength
    if rng.random() < 0.3:
        x += rng.uniform(-cfg.rgb_shift, cfg.rgb_shift, 3).astype(np.float32) * s
    x = _hsv_shift(x, rng, cfg, s)
    return _brightness_contrast(x, rng, cfg.brightness * s, cfg.contrast * s)


def _hsv_shift(x: np.ndarray, rng: np.random.Generator, cfg: SBIConfig, s: float = 1.0) -> np.ndarray:
    hsv = cv2.cvtColor(np.clip(x, 0, 255).astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-cfg.hue_shift, cfg.hue_shift) * s) % 180
    hsv[..., 1] += rng.uniform(-cfg.sat_shift, cfg.sat_shift) * s
    hsv[..., 2] += rng.uniform(-cfg.val_shift, cfg.val_shift) * s
    return cv2.cvtColor(np.clip(hsv, 0, [179, 255, 255]).astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)


def _brightness_contrast(x: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float) -> np.ndarray:
    """albumentations' RandomBrightnessContrast (brightness_by_max): x * (1 + c) + b * 255."""
    a = 1 + rng.uniform(-contrast, contrast)
    b = rng.uniform(-brightness, brightness) * 255
    return np.clip(x * a + b, 0, 255)


def frequency_transform(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the official RandomDownScale (x1/2 or x1/4, nearest down, linear up) or Sharpen."""
    h, w = img.shape[:2]
    if rng.random() < 0.5:
        r = (2, 4)[int(rng.integers(2))]
        small = cv2.resize(img, (max(int(w / r), 1), max(int(h / r), 1)), interpolation=cv2.INTER_NEAREST)
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
    mask = hull_mask(lm5, (h, w), rng)
    source, mask = random_affine(source, mask, rng, cfg)
    mask = elastic(mask, rng, cfg)
    m = blend_mask(mask, rng) * float(ratios[rng.integers(len(ratios))])
    out = m[..., None] * source + (1 - m[..., None]) * target
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), m.astype(np.float32)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else img


def post_blend(images: list[np.ndarray], rng: np.random.Generator, cfg: SBIConfig | None = None) -> list[np.ndarray]:
    """The paper's training transforms after blending, with the same random draw for every image given
    (a real crop and its blend): RGB shift, HSV, brightness/contrast +-0.3 (each p 0.3), JPEG 40..100 (p 0.5)."""
    cfg = cfg or SBIConfig()
    seed = int(rng.integers(2**63))
    out = []
    for img in images:
        r = np.random.default_rng(seed)  # the same draws for each image
        x = img.astype(np.float32)
        if r.random() < 0.3:
            x = x + r.uniform(-cfg.rgb_shift, cfg.rgb_shift, 3).astype(np.float32)
        if r.random() < 0.3:
            x = _hsv_shift(x, r, cfg)
        if r.random() < 0.3:
            x = _brightness_contrast(x, r, cfg.post_brightness, cfg.post_contrast)
        x = np.clip(x + 0.5, 0, 255).astype(np.uint8)
        if r.random() < 0.5:
            x = jpeg(x, int(r.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
        out.append(x)
    return out
