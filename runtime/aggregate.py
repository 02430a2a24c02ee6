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


def aggregate(
    frames: list[dict[str, Any]], threshold: float, policy: VerdictPolicy | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """frames: [{index, t, faces: [{track, box, p_fake (None: not judged), ...}]}] -> (tracks, video)."""
    policy = policy or VerdictPolicy()
    tracks: dict[int, dict[str, Any]] = {}
    frame_max: list[float] = []
    crops: list[float] = []
    without = small = 0
    for fr in frames:
        if not fr["faces"]:
            without += 1
            continue
        ps = [f["p_fake"] for f in fr["faces"] if f.get("p_fake") is not None]
        if ps:
            frame_max.append(max(ps))
            crops.extend(ps)
        for f in fr["faces"]:
            tr = tracks.setdefault(
                f["track"],
                {"id": f["track"], "first_t": fr["t"], "first_frame": fr["index"], "ps": [], "sizes": [], "n": 0},
            )
            tr["n"] += 1
            tr["sizes"].append(face_size(f["box"]))
            if f.get("p_fake") is None:
                small += 1
            else:
                tr["ps"].append(f["p_fake"])
            tr["last_t"], tr["last_frame"] = fr["t"], fr["index"]
    need = policy.crops_needed(len(frames))
    track_list = []
    for tr in sorted(tracks.values(), key=lambda d: d["id"]):
        ps, sizes, n = tr.pop("ps"), sorted(tr.pop("sizes")), tr.pop("n")
        judgeable = len(ps) >= need
        mean = sum(ps) / len(ps) if ps else None
        track_list.append(
            {
                **tr,
                "n_crops": n,
                "n_judged": len(ps),
                "face_px": round(sizes[len(sizes) // 2], 1),
                "p_fake_mean": mean,
                "p_fake_max": max(ps) if ps else None,
                "judgeable": judgeable,
                "verdict": ("fake" if mean >= threshold else "real") if judgeable else "unknown",
            }
        )
    judged = [t for t in track_list if t["judgeable"]]
    if judged:
        score = max(t["p_fake_mean"] for t in judged)
        verdict = "fake" if score >= threshold else "real"
    else:
        score, verdict = None, "unknown"
    video = {
        "verdict": verdict,
        "score": score,
        "score_name": "track_max",
        "threshold": threshold,
        "frame_max_mean": sum(frame_max) / len(frame_max) if frame_max else None,
        "crop_mean": sum(crops) / len(crops) if crops else None,
        "n_frames_analysed": len(frames),
        "n_frames_with_face": len(frames) - without,
        "n_frames_without_face": without,
        "n_crops": len(crops),
        "n_faces_too_small": small,
        "n_tracks": len(track_list),
        "n_tracks_judged": len(judged),
        "policy": {**policy.to_dict(), "crops_needed": need},
    }
    return track_list, video
