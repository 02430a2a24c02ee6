"""Parity between two sets of logits for the same crops: one definition for the export gate (export/verify.py)
and the on-device check of `edgedf bench` (devices/worker.py). numpy only.

`edgedf export` puts `reference.npz` in every bundle: a few face crops (uint8, before preprocessing) and
PyTorch's logits for them, so the device that runs the bundle can check its own kernels (a Pi's 2-bit
MatMulNBits, a Jetson's engine) against the model, not only the export machine's. Bundles exported before
this have none (optional in the format); the bench then falls back to ONNX Runtime as its reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

REFERENCE = "reference.npz"  # images: uint8 [N, S, S, 3] BGR crops; logits: float32 [N, C] from PyTorch
REFERENCE_CROPS = 16
STORED = "pytorch logits stored in the bundle"
DP_FLOOR = 0.02  # on-device |dp| allowed beyond the export machine's, whatever that was

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


def load_reference(bundle) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, logits) stored in the bundle, or None for a bundle without them (exported before they were)."""
    if REFERENCE not in bundle.manifest.get("files", {}):
        return None
    with np.load(bundle.path / REFERENCE, allow_pickle=False) as z:
        return z["images"], z["logits"]


def reference_check(bundle, infer: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any] | None:
    """Run `infer` (float32 input -> logits) on the bundle's reference crops and compare with PyTorch's logits."""
    ref = load_reference(bundle)
    if ref is None:
        return None
    images, logits = ref
    out = infer(bundle.spec.to_input(images, "BGR"))
    return {
        "status": "ok",
        "reference": STORED,
        **compare(logits, out, bundle.fake_index, bundle.threshold),
    }


def reference_holds(here: dict[str, Any], at_export: dict[str, Any] | None) -> tuple[bool, str | None]:
    """Does this machine reproduce, on the reference crops, what the export machine saw on them? No decision
    may flip that did not flip there, and |dp| may exceed the export machine's at most by DP_FLOOR."""
    want = (at_export or {}).get("decisive_agreement")
    got = here.get("decisive_agreement")
    if got is not None and got < (1.0 if want is None else want):
        n = here["decisive_crops"]
        return False, f"{round((1 - got) * n)} of {n} reference crops decided otherwise than PyTorch"
    limit = (at_export or {}).get("max_abs_dp", 0.0) + DP_FLOOR
    if here["max_abs_dp"] > limit:
        return (
            False,
            f"max |dp| {here['max_abs_dp']:.3g} on the reference crops (export machine: {limit - DP_FLOOR:.3g})",
        )
    return True, None
