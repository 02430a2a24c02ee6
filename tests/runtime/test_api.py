"""The Python API (edgedf.Detector) gives what `edgedf run` gives, without torch: a path, frames from the
caller's own loop, or aligned crops."""

from __future__ import annotations

import json

import cv2
import jsonschema
import numpy as np
import pytest
from typer.testing import CliRunner

from edgedf import Detector
from edgedf.cli import app
from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.report import load_schema


def comparable(section: dict) -> dict:
    return {k: v for k, v in section.items() if k not in ("timings_s", "speed")}


@pytest.fixture(scope="module")
def det(tiny_bundle):
    return Detector(tiny_bundle, every=2)


def test_analyse_is_the_cli_section(det, tiny_bundle, face_video, tmp_path):
    out = tmp_path / "r.json"
    r = CliRunner().invoke(
        app, ["run", str(face_video), "--bundle", str(tiny_bundle), "--every", "2", "--json", str(out)]
    )
    assert r.exit_code == 0, r.output
    (cli,) = json.loads(out.read_text())["sources"]
    mine = det.analyse(face_video)
    assert comparable(mine) == comparable(cli)
    jsonschema.validate(det.report([mine]), load_schema())


def test_frames_from_a_capture_loop_match_the_file(det, face_video):
    """Frames decoded by the caller and handed over as a generator: the same faces, tracks and scores as
    the file itself (only the source description differs)."""
    cap = cv2.VideoCapture(str(face_video))

    def frames():
        while True:
            ok, img = cap.read()
            if not ok:
                return
            yield img

    events = []
    mine = det.analyse_frames(frames(), fps=30, name="camera-1", on_event=events.append)
    cap.release()
    ref = det.analyse(face_video)
    assert mine["info"]["kind"] == "frames" and mine["source"] == "camera-1"
    for key in ("video", "tracks", "frames"):
        assert mine[key] == ref[key], key
    assert [e["track"] for e in events] == [1] and events[0]["verdict"] == ref["video"]["verdict"]
    jsonschema.validate(det.report([mine]), load_schema())


def test_p_fake_on_aligned_crops_matches_the_pipeline(det, face_video):
    from edgedf.runtime.align import align_faces

    cap = cv2.VideoCapture(str(face_video))
    ok, img = cap.read()
    cap.release()
    faces = det.pipeline.detector.detect(img)
    crops = align_faces(img, faces.landmarks, det.spec, faces.boxes)
    p = det.p_fake(crops)
    assert p.shape == (len(faces),) and np.all((p >= 0) & (p <= 1))
    assert det.analyse_frames([img])["frames"][0]["faces"][0]["p_fake"] == pytest.approx(float(p[0]), abs=1e-6)


def test_bad_frames_and_sources_raise_one_line_errors(det):
    with pytest.raises(EdgedfError, match="expected a BGR image"):
        det.analyse_frames([np.zeros((4,), np.uint8)])
    with pytest.raises(EdgedfError, match="file not found"):
        det.analyse("/nonexistent/clip.mp4")
    with pytest.raises(ValueError, match="choose one of"):
        Detector(every=2, fps=5)
