"""Calibration and verification inputs: face crops from --data, made with the one preprocessing spec.

--data is a folder of face crops or face images (e.g. what `edgedf prepare` writes); each image is
centre-cropped to a square and resized to the spec's input size, then normalised by the spec. Without
--data, random images are used: fine for checking parity, poor for calibrating int8 ranges (export says so).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.spec import FaceCropSpec

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
INTERP = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}


@dataclass
class CropSource:
    kind: str  # "data" | "random"
    files: list[Path]
    spec: FaceCropSpec
    seed: int = 0

    def describe(self) -> dict:
        return {"source": self.kind, "images": len(self.files) if self.kind == "data" else None}

    def crops(self, n: int, offset: int = 0) -> np.ndarray:
        """n crops as float32 [n, 3, S, S]; `offset` picks a different slice (verification vs calibration)."""
        return self.spec.to_input(self.images(n, offset), crops_color="BGR")

    def images(self, n: int, offset: int = 0) -> np.ndarray:
        """The same crops before preprocessing: uint8 BGR [n, S, S, 3]."""
        s = self.spec.input_size
        if self.kind == "random":
            rng = np.random.default_rng(self.seed + offset)
            # smooth random images (noise blurred; closer to natural image statistics than white noise), each with
            # its own contrast and colour, so that images differ as a whole and not only in their details
            raw = rng.random((n, s // 8, s // 8, 3)) * rng.uniform(0.2, 1.2, (n, 1, 1, 1))
            raw = 255 * np.clip(raw + rng.uniform(0.0, 0.6, (n, 1, 1, 3)), 0, 1)
            return np.stack([cv2.resize(r.astype(np.uint8), (s, s), interpolation=cv2.INTER_CUBIC) for r in raw])
        out = []
        for i in range(n):
            f = self.files[(offset + i) % len(self.files)]
            out.append(load_crop(f, self.spec))
        return np.stack(out)

    def batches(self, n: int, batch: int, offset: int = 0) -> Iterator[np.ndarray]:
        for i in range(0, n, batch):
            yield self.crops(min(batch, n - i), offset + i)


def load_crop(path: Path, spec: FaceCropSpec) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise EdgedfError(f"cannot read image {path}")
    h, w = img.shape[:2]
    m = min(h, w)
    y0, x0 = (h - m) // 2, (w - m) // 2
    img = img[y0 : y0 + m, x0 : x0 + m]
    return cv2.resize(img, (spec.input_size, spec.input_size), interpolation=INTERP[spec.interpolation])


def crop_source(data: Path | None, spec: FaceCropSpec, fraction: float = 1.0, seed: int = 0) -> CropSource:
    if data is None:
        return CropSource("random", [], spec, seed)
    if not data.exists():
        raise EdgedfError(f"calibration folder not found: {data}")
    if not data.is_dir():
        raise EdgedfError(f"--data must be a folder of face images: {data}")
    if not 0 < fraction <= 1:
        raise EdgedfError(f"--fraction must be in (0, 1], got {fraction}")
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise EdgedfError(f"calibration folder {data} has no images ({', '.join(sorted(IMAGE_EXTS))})")
    rng = np.random.default_rng(seed)
    files = [files[i] for i in rng.permutation(len(files))]
    files = files[: max(1, int(round(len(files) * fraction)))]
    return CropSource("data", files, spec, seed)
