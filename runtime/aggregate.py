"""Aggregation: p(fake) per face crop -> per track and per video scores and a verdict (DESIGN.md, contract 5).

- per track: mean (and max) of its crops' p(fake);
- per video: `frame_max_mean`, the mean over analysed frames with a face of the largest p(fake) among that
  frame's faces (one fake face makes a frame fake), and `crop_mean`, the mean over all crops;
- verdict: `fake` if frame_max_mean >= threshold, else `real`; `unknown` when no face was found.
  Frames without a face are counted, never scored.
"""

from __future__ import annotations

from typing import Any


def aggregate(frames: list[dict[str, Any]], threshold: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """frames: [{index, t, faces: [{track, p_fake, ...}]}] -> (tracks, video) report sections."""
    tracks: dict[int, dict[str, Any]] = {}
    frame_max: list[float] = []
    crops: list[float] = []
    without = 0
    for fr in frames:
        ps = [f["p_fake"] for f in fr["faces"] if f.get("p_fake") is not None]
        if not ps:
            without += 1
            continue
        frame_max.append(max(ps))
        crops.extend(ps)
        for f in fr["faces"]:
            if f.get("p_fake") is None:
                continue
            tr = tracks.setdefault(
                f["track"], {"id": f["track"], "first_t": fr["t"], "ps": [], "first_frame": fr["index"]}
            )
            tr["ps"].append(f["p_fake"])
            tr["last_t"], tr["last_frame"] = fr["t"], fr["index"]
    track_list = []
    for tr in sorted(tracks.values(), key=lambda d: d["id"]):
        ps = tr.pop("ps")
        track_list.append(
            {
                **tr,
                "n_crops": len(ps),
                "p_fake_mean": sum(ps) / len(ps),
                "p_fake_max": max(ps),
                "verdict": "fake" if sum(ps) / len(ps) >= threshold else "real",
            }
        )
    if frame_max:
        score = sum(frame_max) / len(frame_max)
        verdict = "fake" if score >= threshold else "real"
    else:
        score, verdict = None, "unknown"
    video = {
        "verdict": verdict,
        "score": score,
        "score_name": "frame_max_mean",
        "threshold": threshold,
        "frame_max_mean": score,
        "crop_mean": sum(crops) / len(crops) if crops else None,
        "n_frames_analysed": len(frames),
        "n_frames_with_face": len(frame_max),
        "n_frames_without_face": without,
        "n_crops": len(crops),
        "n_tracks": len(track_list),
    }
    return track_list, video
