import json

import cv2
import pytest
from typer.testing import CliRunner

from edgedf.cli import app

runner = CliRunner()
pytest.importorskip("skimage")


def test_demo_builds_clips_and_writes_outputs(tmp_path):
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    names = [s["source"].rsplit("/", 1)[-1] for s in report["sources"]]
    assert names == ["real.mp4", "self_blended.mp4"]
    for s in report["sources"]:
        assert s["video"]["verdict"] in ("real", "fake") and s["video"]["n_frames_with_face"] > 0
    # the shipped detector is trained: the self-blended face scores clearly above the real one
    real_score, blend_score = (s["video"]["score"] for s in report["sources"])
    assert blend_score > real_score + 0.3
    for name in ("annotated_000_real.mp4", "annotated_001_self_blended.mp4"):
        cap = cv2.VideoCapture(str(out / name))
        ok, frame = cap.read()
        assert ok and frame.shape[2] == 3
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    real = cv2.VideoCapture(str(out / "real.mp4")).read()[1]
    blended = cv2.VideoCapture(str(out / "self_blended.mp4")).read()[1]
    assert real.shape == blended.shape and (real != blended).any()  # same motion, a different face


def test_demo_bad_path(tmp_path):
    r = runner.invoke(app, ["demo", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "not found" in r.output
