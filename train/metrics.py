"""Detection metrics, computed with scikit-learn: frame- and video-level AUC, EER, AP, ACC at a threshold.

Scores are p(fake); label 1 is fake. Video level follows DeepfakeBench: the mean of the frame
probabilities of a video (frames without a face are not scored). A metric that needs both classes is
None when a group has only one (AUC of an all-real set is undefined, not 0.5).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def eer(labels: np.ndarray, scores: np.ndarray) -> float:
    """Equal error rate: where the false positive rate equals the false negative rate (interpolated)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    if i == 0:
        return float((fpr[0] + fnr[0]) / 2)
    # linear interpolation between the two ROC points around the crossing
    d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    if (d0 > 0) != (d1 > 0) and d0 != d1:
        t = d0 / (d0 - d1)
        return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))
    return float((fpr[i] + fnr[i]) / 2)


def binary_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> dict[str, float | None]:
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    both = len(np.unique(y)) == 2
    out: dict[str, float | None] = {
        "n": int(len(y)),
        "n_fake": int(y.sum()),
        "auc": float(roc_auc_score(y, s)) if both else None,
        "ap": float(average_precision_score(y, s)) if both else None,
        "eer": eer(y, s) if both else None,
        "acc": float(((s >= threshold).astype(np.int64) == y).mean()) if len(y) else None,
    }
    return out


@dataclass
class Scored:
    """One scored face crop."""

    score: float  # p(fake)
    label: int  # 1 fake, 0 real
    video: str  # video id (an image is its own video)
    group: str  # source / method, e.g. "ffpp/Deepfakes" or "stylegan"


def video_level(items: Sequence[Scored]) -> tuple[np.ndarray, np.ndarray]:
    per: dict[str, list[float]] = defaultdict(list)
    lab: dict[str, int] = {}
    for it in items:
        per[it.video].append(it.score)
        lab[it.video] = it.label
    vids = sorted(per)
    return np.array([lab[v] for v in vids]), np.array([float(np.mean(per[v])) for v in vids])


def evaluate(items: Sequence[Scored], threshold: float = 0.5, real_groups: Sequence[str] = ()) -> dict[str, dict]:
    """Metrics per group and pooled ("all"), at frame and video level.

    A group with only fakes (a manipulation method in FF++) is scored against the real crops of its
    dataset, as DeepfakeBench does per method: `real_groups` names the groups whose crops are added
    as the real class to each all-fake group (default: every group that has real crops).
    """
    groups: dict[str, list[Scored]] = defaultdict(list)
    for it in items:
        groups[it.group].append(it)
    reals = [it for g, its in groups.items() if (not real_groups or g in real_groups) for it in its if it.label == 0]
    out: dict[str, dict] = {}
    for name in sorted(groups):
        its = groups[name]
        if all(it.label == 1 for it in its) and reals:
            its = its + reals
        out[name] = _metrics(its, threshold)
    if len(groups) > 1:
        out["all"] = _metrics(list(items), threshold)
    return out


def _metrics(items: Sequence[Scored], threshold: float) -> dict:
    frame = binary_metrics([i.label for i in items], [i.score for i in items], threshold)
    vy, vs = video_level(items)
    video = binary_metrics(vy, vs, threshold)
    return {
        "frames": frame["n"],
        "videos": video["n"],
        "frame_auc": frame["auc"],
        "video_auc": video["auc"],
        "eer": frame["eer"],
        "ap": frame["ap"],
        "acc": frame["acc"],
        "video_eer": video["eer"],
        "video_acc": video["acc"],
    }
