"""Labelled evaluation data for `edgedf bench`: DIR/real/** and DIR/fake/** of face images and/or videos.

Images (face photos or crops of any size) go through the runtime's own detector and aligner with the
bundle's FaceCropSpec, the largest face per image, exactly as `edgedf prepare` and `edgedf run` make crops;
an image without a detected face is counted, not scored. Videos (and animated WebP/GIF) are run through
the full `edgedf run` pipeline by the bench, which also gives its per-stage timings. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgedf.runtime.align import align_face
from edgedf.runtime.backends import BackendOptions
from edgedf.runtime.decode import ANIMATED_EXTS, IMAGE_EXTS, VIDEO_EXTS
from edgedf.runtime.detect import open_detector
from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.spec import FaceCropSpec

LABELS = {"real": 0, "fake": 1}


@dataclass
class LabelledItem:
    path: Path
    label: int  # 1 fake, 0 real
    kind: str  # image | video


@dataclass
class FaceCrops:
    """Aligned crops of the still images of a data folder, for one preprocessing spec."""

    crops: np.ndarray  # uint8 [N, S, S, 3] BGR
    labels: np.ndarray  # int [N]
    names: list[str]
    no_face: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def list_labelled(root: Path) -> list[LabelledItem]:
    root = Path(root)
    if not root.is_dir():
        raise EdgedfError(f"data folder not found: {root}")
    items: list[LabelledItem] = []
    for name, label in LABELS.items():
        d = root / name
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*")):
            if not p.is_file() or p.name.startswith("."):
                continue
            ext = p.suffix.lower()
            if ext in ANIMATED_EXTS and _is_animated(p):
                items.append(LabelledItem(p, label, "video"))
            elif ext in IMAGE_EXTS:
                items.append(LabelledItem(p, label, "image"))
            elif ext in VIDEO_EXTS:
                items.append(LabelledItem(p, label, "video"))
    if not items:
        raise EdgedfError(f"{root} has no real/ or fake/ folder with images or videos")
    return items


def _is_animated(path: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return bool(getattr(im, "is_animated", False))
    except Exception:
        return False


def face_crops(items: list[LabelledItem], spec: FaceCropSpec, threads: int = 0) -> FaceCrops:
    """Detect the largest face of each still image and align it per `spec`."""
    stills = [it for it in items if it.kind == "image"]
    s = spec.input_size
    out = FaceCrops(np.zeros((0, s, s, 3), np.uint8), np.zeros((0,), np.int64), [])
    if not stills:
        return out
    det = open_detector("retinaface", "ort", BackendOptions(threads=threads))
    crops, labels = [], []
    for it in stills:
        img = cv2.imread(str(it.path), cv2.IMREAD_COLOR)
        if img is None:
            out.unreadable.append(str(it.path))
            continue
        if max(img.shape[:2]) < 64:  # too small for the detector to find anything: upscale first
            f = 64 / max(img.shape[:2])
            img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)
        faces = det.detect(img)
        if len(faces) == 0:
            out.no_face.append(str(it.path))
            continue
        area = (faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])
        i = int(np.argmax(area))
        crops.append(align_face(img, faces.landmarks[i], spec, faces.boxes[i]))
        labels.append(it.label)
        out.names.append(str(it.path))
    if crops:
        out.crops = np.stack(crops)
        out.labels = np.asarray(labels, np.int64)
    return out
