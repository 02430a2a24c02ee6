"""Aggregation: p(fake) per face crop -> per track and per video scores and a verdict (DESIGN.md, contract 5).

A wrong "fake" on a real person is the worst thing a detector can say, so a verdict is only given on
evidence the model can judge:

- a face whose box's shorter side is under `min_face_px` is reported (box, track, `judged: false`)
  but not classified: the detector was not trained to judge faces that small, and upscaled small faces
  were its most common false alarm;
- a track is judgeable when it has at least `min_track_crops` judged crops (fewer for sources with
  few analysed frames: a quarter of them, at least one, so a still image can be judged); its score
  is the mean p(fake) of its judged crops;
- the video's score is the highest judgeable track's score (one swapped face makes the video fake,
  but only a face seen long enough, never one frame's maximum); no judgeable track: `unknown`.

`frame_max_mean` and `crop_mean` stay in the report as descriptive figures; they decide nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .errors import EdgedfError


@dataclass(frozen=True)
class VerdictPolicy:
    """What may be judged: travels in the bundle manifest (`verdict_policy`), `edgedf run` can override."""

    min_face_px: float = 64.0  # shorter side of the detector box, source pixels
    min_track_crops: int = 3

    def __post_init__(self) -> None:
        ok_face = isinstance(self.min_face_px, (int, float)) and math.isfinite(self.min_face_px)
        if not ok_face or self.min_face_px < 0:
            raise EdgedfError(f"verdict policy: min_face_px must be a number >= 0, got {self.min_face_px!r}")
        if not isinstance(self.min_track_crops, int) or self.min_track_crops < 1:
            raise EdgedfError(f"verdict policy: min_track_crops must be an integer >= 1, got {self.min_track_crops!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> VerdictPolicy:
        if d is None:
            return cls()
        if not isinstance(d, dict) or set(d) - {"min_face_px", "min_track_crops"}:
            raise EdgedfError(f"verdict policy: expected min_face_px and min_track_crops, got {d!r}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def crops_needed(self, n_frames_analysed: int) -> int:
        return min(self.min_track_crops, max(1, math.ceil(n_frames_analysed / 4)))


def face_size(box: list[float]) -> float:
    """Shorter side of an [x1, y1, x2, y2] box."""
    return float(min(box[2] - box[0], box[3] - box[1]))


def judgeable_face(box: list[float], policy: VerdictPolicy) -> bool:
    return face_size(box) >= policy.min_face_px


MAX_SIZES = 64  # face sizes kept per track for its median face_px (beyond: thinned, so memory stays flat)


class Aggregator:
    """The same aggregation, one analysed frame at a time, in memory that does not grow with the length of
    the source (a camera running for days): running sums per track and for the video, no frame list.

    `add(frame)` returns the tracks whose verdict changed with that frame (became judgeable, or flipped),
    for live verdict events; `result()` gives (tracks, video) as `aggregate` does.
    """

    def __init__(self, threshold: float, policy: VerdictPolicy | None = None):
        self.threshold, self.policy = threshold, policy or VerdictPolicy()
        self.tracks: dict[int, dict[str, Any]] = {}
        self.n_frames = self.without = self.small = self.n_crops = self.n_frame_max = 0
        self.sum_frame_max = self.sum_crops = 0.0

    def add(self, fr: dict[str, Any]) -> list[dict[str, Any]]:
        self.n_frames += 1
        if not fr["faces"]:
            self.without += 1
            return []
        ps = [f["p_fake"] for f in fr["faces"] if f.get("p_fake") is not None]
        if ps:
            self.n_frame_max += 1
            self.sum_frame_max += max(ps)
            self.n_crops += len(ps)
            self.sum_crops += sum(ps)
        touched = {}
        for f in fr["faces"]:
            tr = self.tracks.get(f["track"])
            if tr is None:
                tr = self.tracks[f["track"]] = {"id": f["track"], "first_t": fr["t"], "first_frame": fr["index"],
                                                "n": 0, "n_ps": 0, "sum_ps": 0.0, "max_ps": None, "sizes": [],
                                                "verdict": "unknown"}  # fmt: skip
            tr["n"] += 1
            tr["sizes"].append(face_size(f["box"]))
            if len(tr["sizes"]) > MAX_SIZES:
                tr["sizes"] = sorted(tr["sizes"])[::2]  # every other of the sorted sizes: the median holds
            if f.get("p_fake") is None:
                self.small += 1
            else:
                p = f["p_fake"]
                tr["n_ps"] += 1
                tr["sum_ps"] += p
                tr["max_ps"] = p if tr["max_ps"] is None else max(tr["max_ps"], p)
            tr["last_t"], tr["last_frame"] = fr["t"], fr["index"]
            touched[tr["id"]] = tr
        changed = []
        need = self.policy.crops_needed(self.n_frames)
        for tr in touched.values():
            v = self._track_verdict(tr, need)
            if v != tr["verdict"]:
                tr["verdict"] = v
                changed.append(self._track(tr, need))
        return changed

    def _track_verdict(self, tr: dict[str, Any], need: int) -> str:
        if tr["n_ps"] < need:
            return "unknown"
        return "fake" if tr["sum_ps"] / tr["n_ps"] >= self.threshold else "real"

    def _track(self, tr: dict[str, Any], need: int) -> dict[str, Any]:
        sizes = sorted(tr["sizes"])
        n_ps = tr["n_ps"]
        mean = tr["sum_ps"] / n_ps if n_ps else None
        judgeable = n_ps >= need
        return {
            "id": tr["id"],
            "first_t": tr["first_t"],
            "first_frame": tr["first_frame"],
            "last_t": tr["last_t"],
            "last_frame": tr["last_frame"],
            "n_crops": tr["n"],
            "n_judged": n_ps,
            "face_px": round(sizes[len(sizes) // 2], 1),
            "p_fake_mean": mean,
            "p_fake_max": tr["max_ps"],
            "judgeable": judgeable,
            "verdict": self._track_verdict(tr, need),
        }

    def result(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        need = self.policy.crops_needed(self.n_frames)
        track_list = [self._track(tr, need) for tr in sorted(self.tracks.values(), key=lambda d: d["id"])]
        judged = [t for t in track_list if t["judgeable"]]
        if judged:
            score = max(t["p_fake_mean"] for t in judged)
            verdict = "fake" if score >= self.threshold else "real"
        else:
            score, verdict = None, "unknown"
        video = {
            "verdict": verdict,
            "score": score,
            "score_name": "track_max",
            "threshold": self.threshold,
            "frame_max_mean": self.sum_frame_max / self.n_frame_max if self.n_frame_max else None,
            "crop_mean": self.sum_crops / self.n_crops if self.n_crops else None,
            "n_frames_analysed": self.n_frames,
            "n_frames_with_face": self.n_frames - self.without,
            "n_frames_without_face": self.without,
            "n_crops": self.n_crops,
            "n_faces_too_small": self.small,
            "n_tracks": len(track_list),
            "n_tracks_judged": len(judged),
            "policy": {**self.policy.to_dict(), "crops_needed": need},
        }
        return track_list, video


def aggregate(
    frames: list[dict[str, Any]], threshold: float, policy: VerdictPolicy | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """frames: [{index, t, faces: [{track, box, p_fake (None: not judged), ...}]}] -> (tracks, video)."""
    agg = Aggregator(threshold, policy)
    for fr in frames:
        agg.add(fr)
    return agg.result()
