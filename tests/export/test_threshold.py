"""The decision threshold from real dev crops at a stated false-alarm rate (export/threshold.py)."""

import numpy as np
import pytest

from edgedf.export.threshold import threshold_for
from edgedf.runtime.errors import EdgedfError


def test_threshold_meets_the_false_alarm_rate():
    real = np.random.default_rng(0).beta(2, 5, 1000)
    for far in (0.01, 0.05, 0.2):
        t = threshold_for(real, far)
        assert (real >= t).mean() <= far  # at most that share of real faces called fake
        assert (real >= np.nextafter(t, 0) - 1e-9).mean() > far - 0.002  # and not needlessly higher
    assert threshold_for(np.array([0.1, 0.2, 0.9]), 0.0) > 0.9  # no false alarm allowed: above every real
    with pytest.raises(EdgedfError, match="real crops"):
        threshold_for(np.array([]), 0.01)


def test_export_calibrates_and_records_the_threshold(checkpoints, tmp_path):
    """A bundle exported with --threshold-data carries the calibrated threshold and how it was chosen."""
    from edgedf.export.api import ExportOptions, export_bundle
    from edgedf.export.threshold import calibrate

    bit_checkpoint = checkpoints["bit"]
    crops = make_labeled_crops(tmp_path / "crops", bit_checkpoint)
    out, m = export_bundle(
        bit_checkpoint, ExportOptions(target="ort", out=tmp_path / "b", verify_n=16, threshold_data=[crops],
                                      false_alarm=0.25, min_face_px=80)
    )  # fmt: skip
    cal = m["threshold_calibration"]
    assert m["threshold"] == cal["threshold"] and cal["real_crops"] == 8 and cal["fake_crops"] == 8
    assert cal["false_alarm_rate"] <= 0.25 and m["verdict_policy"]["min_face_px"] == 80
    assert not any("not calibrated" in n for n in m["notes"])
    again = calibrate(out, [crops], 0.25)  # the same scores from the written bundle
    assert again["threshold"] == pytest.approx(cal["threshold"])
    from edgedf.runtime.bundle import load_bundle

    b = load_bundle(out)
    assert b.threshold == cal["threshold"] and b.verdict_policy.min_face_px == 80


def make_labeled_crops(root, checkpoint):
    """A crops folder in the checkpoint's spec: 8 real, 8 fake (noise images), all in split val."""
    import json

    import cv2

    from edgedf.train.checkpoint import load_checkpoint

    spec = load_checkpoint(checkpoint).spec
    s = spec.input_size
    root.mkdir(parents=True)
    (root / "spec.json").write_text(spec.to_json())
    rng = np.random.default_rng(1)
    lines = []
    for i in range(16):
        img = cv2.GaussianBlur(rng.integers(0, 255, (s, s, 3), dtype=np.uint8), (0, 0), 1 + i % 3)
        cv2.imwrite(str(root / f"{i}.png"), img)
        lines.append(json.dumps({"path": f"{i}.png", "video": f"v{i}", "frame": 0, "label": i % 2, "split": "val"}))
    (root / "index.jsonl").write_text("\n".join(lines) + "\n")
    return root
