"""Tracking: associate faces across analysed frames so each identity gets a track id, and carry faces
through the frames where the detector does not run.

- `Tracker.update(faces, t)` after a detection: greedy matching on a similarity made of box IoU and the
  landmarks' distance (normalised by the face size), so fast motion that breaks IoU still matches when the
  landmarks agree; unmatched faces start new tracks; tracks unseen for `max_age_s` end.
- `Tracker.propagate(gray, t)` on frames without detection: moves each live track's 5 landmarks with
  pyramidal Lucas-Kanade optical flow from the previous analysed frame (about 1 ms), and its box with
  them. A track whose points are lost is dropped from that frame (it may be re-found by the next detection);
  only detections keep a track alive, so flow never carries a face that the detector no longer sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .detect import Faces


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N, 4] with every box in b [M, 4] (x1, y1, x2, y2)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return (inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)).astype(np.float32)


def landmark_distance(a: np.ndarray, b: np.ndarray, boxes_a: np.ndarray) -> np.ndarray:
    """Mean landmark distance between faces, in units of the first set's face size: [N, M]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    d = np.linalg.norm(a[:, None] - b[None, :], axis=-1).mean(-1)
    size = np.maximum(np.maximum(boxes_a[:, 2] - boxes_a[:, 0], boxes_a[:, 3] - boxes_a[:, 1]), 1.0)
    return (d / size[:, None]).astype(np.float32)


@dataclass
class Track:
    id: int
    box: np.ndarray
    landmarks: np.ndarray
    last_t: float
    hits: int = 1


class Tracker:
    def __init__(self, iou_threshold: float = 0.25, landmark_threshold: float = 0.35, max_age_s: float = 1.0):
        self.iou_threshold = iou_threshold
        self.landmark_threshold = landmark_threshold
        self.max_age_s = max_age_s
        self.tracks: list[Track] = []
        self._next_id = 1
        self._prev_gray: np.ndarray | None = None
        self._gray_scale = 1.0

    def _expire(self, t: float) -> None:
        self.tracks = [tr for tr in self.tracks if t - tr.last_t <= self.max_age_s]

    def update(self, faces: Faces, t: float) -> list[int]:
        """Assign a track id to each detected face (in order); start tracks for new faces."""
        self._expire(t)
        n = len(faces)
        ids = [0] * n
        if self.tracks and n:
            tb = np.stack([tr.box for tr in self.tracks])
            tl = np.stack([tr.landmarks for tr in self.tracks])
            iou = iou_matrix(tb, faces.boxes)
            lmd = landmark_distance(tl, faces.landmarks, tb)
            ok = (iou >= self.iou_threshold) | (lmd <= self.landmark_threshold)
            sim = np.where(ok, iou + (1.0 - np.minimum(lmd, 1.0)), -np.inf)
            used_t, used_f = set(), set()
            for flat in np.argsort(-sim, axis=None):
                ti, fi = divmod(int(flat), n)
                if not np.isfinite(sim[ti, fi]):
                    break
                if ti in used_t or fi in used_f:
                    continue
                used_t.add(ti)
                used_f.add(fi)
                tr = self.tracks[ti]
                tr.box, tr.landmarks, tr.last_t = faces.boxes[fi].copy(), faces.landmarks[fi].copy(), t
                tr.hits += 1
                ids[fi] = tr.id
        for fi in range(n):
            if ids[fi] == 0:
                tr = Track(self._next_id, faces.boxes[fi].copy(), faces.landmarks[fi].copy(), t)
                self._next_id += 1
                self.tracks.append(tr)
                ids[fi] = tr.id
        return ids

    def observe(self, gray: np.ndarray, scale: float) -> None:
        """Remember the analysed frame (gray, scaled by `scale` from frame pixels) for optical flow."""
        self._prev_gray, self._gray_scale = gray, scale

    def propagate(self, gray: np.ndarray, scale: float, t: float) -> tuple[Faces, list[int]]:
        """Faces of live tracks moved by optical flow into this frame (no detection ran on it)."""
        self._expire(t)
        prev = self._prev_gray
        self.observe(gray, scale)
        live = list(self.tracks)
        if prev is None or not live or prev.shape != gray.shape:
            return Faces(), []
        p0 = np.concatenate([tr.landmarks for tr in live]).astype(np.float32) * scale
        p1, st, _ = cv2.calcOpticalFlowPyrLK(
            prev,
            gray,
            p0.reshape(-1, 1, 2),
            None,
            winSize=(21, 21),
            maxLevel=3,
            criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03),
        )
        p1 = p1.reshape(-1, 5, 2) / scale
        st = st.reshape(-1, 5).astype(bool)
        boxes, lms, ids, scores = [], [], [], []
        for k, tr in enumerate(live):
            if st[k].sum() < 4:
                continue
            old, new = tr.landmarks, p1[k]
            shift = np.median(new[st[k]] - old[st[k]], axis=0)
            new = np.where(st[k][:, None], new, old + shift)
            so = np.linalg.norm(old - old.mean(0), axis=1).mean()
            sn = np.linalg.norm(new - new.mean(0), axis=1).mean()
            zoom = float(np.clip(sn / max(so, 1e-3), 0.8, 1.25))
            c_old = (tr.box[:2] + tr.box[2:]) / 2
            c_new = c_old + (new.mean(0) - old.mean(0))
            half = (tr.box[2:] - tr.box[:2]) / 2 * zoom
            tr.box = np.concatenate([c_new - half, c_new + half]).astype(np.float32)
            tr.landmarks = new.astype(np.float32)
            boxes.append(tr.box)
            lms.append(tr.landmarks)
            ids.append(tr.id)
            scores.append(0.0)
        if not ids:
            return Faces(), []
        return Faces(np.stack(boxes), np.asarray(scores, np.float32), np.stack(lms)), ids
