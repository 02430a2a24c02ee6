"""Parity between two sets of logits for the same crops: one definition for the export gate (export/verify.py)
and the on-device check of `edgedf bench` (devices/worker.py). numpy only."""

from __future__ import annotations

from typing import Any

import numpy as np

# Crops whose reference p(fake) lies this close to the threshold are coin flips under any numerical
# perturbation (another thread count flips them); the gates count decisions outside this band.
DECISION_BAND = 0.01


def softmax_p(logits: np.ndarray, fake_index: int) -> np.ndarray:
    """Softmax probability of class `fake_index` from logits [N, C]."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, fake_index] / e.sum(axis=1)


def compare(ref_logits: np.ndarray, logits: np.ndarray, fake_index: int, threshold: float) -> dict[str, Any]:
    p_ref, p = softmax_p(ref_logits, fake_index), softmax_p(logits, fake_index)
    a, b = ref_logits.ravel().astype(np.float64), logits.ravel().astype(np.float64)
    same = (p >= threshold) == (p_ref >= threshold)
    decisive = np.abs(p_ref - threshold) >= DECISION_BAND
    return {
        "crops": int(len(p)),
        "max_abs_dp": float(np.abs(p - p_ref).max()) if len(p) else 0.0,
        "mean_abs_dp": float(np.abs(p - p_ref).mean()) if len(p) else 0.0,
        "agreement": float(same.mean()) if len(p) else 1.0,
        "decisive_crops": int(decisive.sum()),
        "decisive_agreement": float(same[decisive].mean()) if decisive.any() else None,
        "logit_cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)),
    }
