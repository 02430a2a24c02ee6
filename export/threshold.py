"""The decision threshold, calibrated on real data to a stated false-alarm rate (DESIGN.md, contract 5).

A wrong "fake" on a real person is the worst thing a detector can say, so the threshold is chosen on
real faces only: the bundle itself (its backend, as it will run) scores the real crops of dev splits,
and the threshold is set so that a share `false_alarm` of them score at or above it. The fakes of the
same splits give the detection rate at that threshold, for the record. The result travels in the
manifest (`threshold_calibration`) with the data, split, counts and rates it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgedf.runtime.errors import EdgedfError


def threshold_for(real_scores: np.ndarray, false_alarm: float) -> float:
    """The smallest threshold at which at most `false_alarm` of `real_scores` are >= it."""
    s = np.sort(np.asarray(real_scores, np.float64))[::-1]
    if not len(s):
        raise EdgedfError("threshold calibration needs real crops")
    k = int(np.floor(false_alarm * len(s)))  # this many reals may lie at or above the threshold
    if k >= len(s):
        return float(s[-1])
    return float(np.nextafter(s[k], np.inf))  # just above the (k+1)-th highest real score


def check_false_alarm(false_alarm: float) -> None:
    if not 0 < false_alarm < 0.5:
        raise EdgedfError(f"--false-alarm must lie in (0, 0.5), got {false_alarm}")


def calibrate(bundle_dir: Path, crops: list[Path], false_alarm: float, split: str = "val,test") -> dict[str, Any]:
    from edgedf.train.evaluate import open_scorer, score_crops

    check_false_alarm(false_alarm)
    scorer = open_scorer(bundle_dir)
    items = []
    for c in crops:
        items += score_crops(scorer, Path(c), split)
    real = np.array([it.score for it in items if it.label == 0])
    fake = np.array([it.score for it in items if it.label == 1])
    t = threshold_for(real, false_alarm)
    return {
        "threshold": t,
        "method": f"real dev crops scored by this bundle; {false_alarm:.1%} of them at or above the threshold",
        "false_alarm_target": false_alarm,
        "data": [str(c) for c in crops],
        "split": split,
        "real_crops": int(len(real)),
        "fake_crops": int(len(fake)),
        "false_alarm_rate": float((real >= t).mean()),
        "detection_rate": float((fake >= t).mean()) if len(fake) else None,
    }
