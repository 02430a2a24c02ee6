"""`edgedf run` end to end: real detector, real backends, videos made here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
from runtime_media import SHARED_DATA, face_frames
from typer.testing import CliRunner

from edgedf.cli import app
from edgedf.runtime.backends import available
from edgedf.runtime.bundle import load_bundle
from edgedf.runtime.fsutil import _umask
from edgedf.runtime.report import load_schema

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["run", *map(str, args)], env={"COLUMNS": "160"})


def validated(path: Path) -> dict:
    report = json.loads(path.read_text())
    jsonschema.validate(report, load_schema())
    return report


def test_video_end_to_end_with_report(tiny_bundle, face_video, tmp_path):
    out = tmp_path / "r.json"
    r = run(face_video, "--bundle", tiny_bundle, "--every", "1", "--json", out)
    assert r.exit_code == 0, r.output
    assert "face.mp4" in r.output
    rep = validated(out)
    (s,) = rep["sources"]
    v = s["video"]
    assert s["status"] == "ok" and v["n_frames_analysed"] == 60 and v["n_frames_with_face"] == 60
    assert v["n_tracks"] == 1 and s["tracks"][0]["n_crops"] == 60  # one identity across the whole clip
    assert s["sampling"]["detect_every"] == 3 and s["sampling"]["frames_detected"] == 20
    ps = [f["faces"][0]["p_fake"] for f in s["frames"]]
    assert v["crop_mean"] == pytest.approx(np.mean(ps)) and v["frame_max_mean"] == pytest.approx(np.mean(ps))
    assert s["tracks"][0]["p_fake_max"] == pytest.approx(max(ps))
    assert v["verdict"] == ("fake" if v["score"] >= 0.5 else "real")
    assert set(s["timings_s"]) >= {"decode", "detect", "track", "align", "classify", "aggregate", "total"}
    assert rep["model"]["notes"] == "test bundle" and rep["backend"]["name"] == "ort"
    assert rep["detector"]["name"] == "retinaface_mnet025"


def test_scores_match_the_classifier_on_aligned_crops(tiny_bundle, tmp_path):
    """The pipeline's p(fake) is the bundle's classifier on crops made by align_face (no hidden steps)."""
    from edgedf.runtime.align import align_face
    from edgedf.runtime.backends import open_classifier
    from edgedf.runtime.detect import open_detector

    img = face_frames(1)[0]
    cv2.imwrite(str(tmp_path / "one.png"), img)
    out = tmp_path / "r.json"
    assert run(tmp_path / "one.png", "--bundle", tiny_bundle, "--json", out).exit_code == 0
    face = validated(out)["sources"][0]["frames"][0]["faces"][0]
    b = load_bundle(tiny_bundle)
    lm = open_detector().detect(img).landmarks[0]
    p = open_classifier(b).p_fake(b.spec.to_input(align_face(img, lm, b.spec)))
    assert face["p_fake"] == pytest.approx(float(p[0]), abs=1e-5)


def test_default_settings_and_naive_agree_on_faces(tiny_bundle, face_video, tmp_path):
    out = tmp_path / "r.json"
    r = run(face_video, "--bundle", tiny_bundle, "--json", out)
    assert r.exit_code == 0, r.output
    s = validated(out)["sources"][0]
    assert s["sampling"]["mode"] == "fps" and s["sampling"]["frames_analysed"] == 10  # 5 fps of 2 s
    assert s["video"]["n_frames_with_face"] == 10


@pytest.mark.skipif(not available("openvino"), reason="OpenVINO not installed")
def test_openvino_backend_gives_the_same_scores(tiny_bundle, face_video, tmp_path):
    a, b = tmp_path / "ort.json", tmp_path / "ov.json"
    assert run(face_video, "--bundle", tiny_bundle, "--frames", "4", "--json", a).exit_code == 0
    r = run(face_video, "--bundle", tiny_bundle, "--frames", "4", "--backend", "openvino", "--json", b)
    assert r.exit_code == 0, r.output
    pa = [f["faces"][0]["p_fake"] for f in validated(a)["sources"][0]["frames"]]
    pb = [f["faces"][0]["p_fake"] for f in validated(b)["sources"][0]["frames"]]
    assert validated(b)["detector"]["backend"] == "openvino"
    np.testing.assert_allclose(pa, pb, atol=2e-3)


def test_no_face_gives_unknown_verdict(tiny_bundle, noface_video, tmp_path):
    out = tmp_path / "r.json"
    r = run(noface_video, "--bundle", tiny_bundle, "--json", out)
    assert r.exit_code == 3, r.output  # nothing could be judged
    v = validated(out)["sources"][0]["video"]
    assert v["verdict"] == "unknown" and v["score"] is None and v["n_frames_without_face"] == v["n_frames_analysed"]


def test_directory_one_bad_file_never_stops_the_others(tiny_bundle, face_video, tmp_path):
    d = tmp_path / "media"
    d.mkdir()
    (d / "a_good.mp4").write_bytes(face_video.read_bytes())
    (d / "b_broken.mp4").write_bytes(b"garbage" * 100)
    gray = cv2.cvtColor(face_frames(1)[0], cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(d / "c_gray16.png"), gray.astype(np.uint16) * 257)
    out = tmp_path / "r.json"
    r = run(d, "--bundle", tiny_bundle, "--frames", "3", "--json", out)
    assert r.exit_code == 1, r.output  # some judged, one failed
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "b_broken.mp4" in errors[0] and "Traceback" not in r.output
    assert "[3/3]" in r.stderr  # each finished source on its own line in logs
    rep = validated(out)
    assert [s["status"] for s in rep["sources"]] == ["ok", "error", "ok"]
    assert rep["sources"][2]["video"]["n_crops"] == 1  # the 16-bit grey image was analysed
    assert rep["summary"]["n_error"] == 1


def test_truncated_faststart_video_is_analysed_with_a_warning(tiny_bundle, tmp_path):
    import av

    p = tmp_path / "fs.mp4"
    with av.open(str(p), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 640, 360, "yuv420p"
        for f in face_frames(60):
            for pk in s.encode(av.VideoFrame.from_ndarray(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    data = p.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "r.json"
    r = run(cut, "--bundle", tiny_bundle, "--every", "5", "--json", out)
    assert r.exit_code == 5, r.output  # judged, but only in part: its own exit code
    s = validated(out)["sources"][0]
    assert s["status"] == "partial" and 0 < s["sampling"]["frames_read"] < 60
    assert any("truncated" in w for w in s["warnings"])
    assert "warning:" in r.stderr and "truncated" in r.stderr  # on the console too, not only in the JSON
    # FFmpeg's own log lines ("[h264 @ 0x...] Invalid NAL unit size") stay out of stderr
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    cmd = [sys.executable, "-m", "edgedf", "run", str(cut), "--bundle", str(tiny_bundle), "--every", "5"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert p.returncode == 5 and "@ 0x" not in p.stderr and "warning:" in p.stderr, p.stderr


@pytest.mark.parametrize(
    "source, message",
    [
        ("{tmp}/missing.mp4", "file not found"),
        ("{tmp}/notes.txt", "not a video or image"),
        ("{tmp}/zero.mp4", "zero-length"),
        ("{tmp}/huge.png", "MP limit"),
        ("rtsp://127.0.0.1:9/live", "cannot open stream"),
    ],
)
def test_bad_sources_one_line_nonzero(tiny_bundle, tmp_path, source, message):
    from test_decode import _png_header_only, make_zero_length_mp4

    (tmp_path / "notes.txt").write_text("hello\n")
    make_zero_length_mp4(tmp_path / "zero.mp4")
    _png_header_only(tmp_path / "huge.png", 40000, 30000)
    out = tmp_path / "r.json"
    r = run(source.replace("{tmp}", str(tmp_path)), "--bundle", tiny_bundle, "--json", out)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.output
    assert validated(out)["sources"][0]["status"] == "error"  # the report still says what happened


def test_tampered_bundle_and_newer_format(tiny_bundle, face_video, tmp_path):
    import shutil

    bad = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, bad)
    with open(bad / "model.onnx", "ab") as f:
        f.write(b"\0")
    r = run(face_video, "--bundle", bad)
    assert r.exit_code == 2 and "does not match its sha256" in r.stderr and r.stderr.count("\n") == 1
    newer = tmp_path / "newer"
    shutil.copytree(tiny_bundle, newer)
    m = json.loads((newer / "manifest.json").read_text())
    m["format_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(m))
    r = run(face_video, "--bundle", newer)
    assert r.exit_code == 2 and "format version 99" in r.stderr


def test_backend_not_installed(tiny_bundle, face_video):
    if available("tensorrt"):
        pytest.skip("TensorRT is installed here")
    r = run(face_video, "--bundle", tiny_bundle, "--backend", "tensorrt")
    assert r.exit_code == 2 and "backend tensorrt is not installed" in r.stderr and r.stderr.count("\n") == 1
    r = run(face_video, "--bundle", tiny_bundle, "--backend", "onnx")
    assert r.exit_code == 2 and "unknown backend" in r.stderr


@pytest.mark.parametrize(
    "change, message",
    [
        ({"threshold": "high"}, "threshold must be a number"),
        ({"threshold": 1.7}, "threshold must be a number"),
        ({"labels": "real"}, "labels must be a list"),
        ({"fake_index": 5}, "fake_index 5 is outside"),
        ({"verdict_policy": {"min_face_px": -3, "min_track_crops": 3}}, "min_face_px"),
    ],
)
def test_bad_bundle_fields_fail_at_load(tiny_bundle, face_video, tmp_path, change, message):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m.update(change)
    (bad / "manifest.json").write_text(json.dumps(m))
    r = run(face_video, "--bundle", bad)
    assert r.exit_code == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.output


def test_option_errors(tiny_bundle, face_video):
    r = run(face_video, "--bundle", tiny_bundle, "--every", "2", "--fps", "3")
    assert r.exit_code == 2 and "choose one of" in r.stderr
    for bad in ("inf", "nan"):
        r = run(face_video, "--bundle", tiny_bundle, "--fps", bad)
        assert r.exit_code == 2 and "--fps needs a positive number" in r.stderr and "Traceback" not in r.output
    r = run(face_video, "--bundle", tiny_bundle, "--min-face", "-1")
    assert r.exit_code == 2 and "--min-face" in r.stderr
    r = run(face_video, "--bundle", tiny_bundle, "--threshold", "1.5")
    assert r.exit_code == 2 and "--threshold" in r.stderr


@pytest.mark.slow
def test_annotate_and_plot(tiny_bundle, face_video, tmp_path):
    ann, png, out = tmp_path / "a.mp4", tmp_path / "p.png", tmp_path / "r.json"
    r = run(face_video, "--bundle", tiny_bundle, "--every", "2", "--annotate", ann, "--plot", png, "--json", out)
    assert r.exit_code == 0, r.output
    cap = cv2.VideoCapture(str(ann))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    ok, frame = cap.read()
    assert ok and frame.shape == (360, 640, 3)
    box = validated(out)["sources"][0]["frames"][0]["faces"][0]["box"]
    x1, y1 = int(box[0]), int(box[1])
    # the box outline is drawn in green (real) or red (fake), not the grey background
    edge = frame[y1 + 5 : y1 + 20, max(0, x1 - 1) : x1 + 2].reshape(-1, 3).astype(int)
    assert (np.abs(edge - 90).max(axis=1) > 60).any()
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 100
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_default_bundle_ships_trained_ternary_and_says_what_it_is():
    from edgedf.runtime.pipeline import DEFAULT_BUNDLE

    b = load_bundle(DEFAULT_BUNDLE)  # hashes verified
    m = b.manifest
    assert m["model"]["trained"] is True and m["model"]["variant"] == "bit" and m["precision"] == "ternary"
    assert m["backend"] == "ort" and "DFDC" in b.notes and "MODEL_CARD.md" in b.notes
    assert all(r["decisive_agreement"] >= 0.99 for r in m["parity"]["backends"].values() if r["status"] == "ok")
    assert sum(f.stat().st_size for f in DEFAULT_BUNDLE.iterdir()) < 6e6  # the edge budget
    # the threshold was calibrated on real dev faces, and says how
    cal = m["threshold_calibration"]
    assert b.threshold == cal["threshold"] and cal["real_crops"] > 500
    assert cal["false_alarm_rate"] <= cal["false_alarm_target"] <= 0.05
    assert b.verdict_policy.min_face_px > 0


def test_uncalibrated_threshold_is_flagged(tiny_bundle, face_video):
    # a bundle exported without --threshold-data: its "fake" verdicts have no known false-alarm rate, and run says so
    # on stderr (the table and the report stay as they are); an explicit --threshold is the user's own choice
    assert load_bundle(tiny_bundle).manifest.get("threshold_calibration") is None
    r = run(face_video, "--bundle", tiny_bundle, "--frames", "4")
    assert r.exit_code == 0, r.output
    assert "threshold (0.50) was not calibrated" in r.stderr and "not calibrated" not in r.stdout
    r = run(face_video, "--bundle", tiny_bundle, "--frames", "4", "--threshold", "0.5")
    assert r.exit_code == 0 and "not calibrated" not in r.stderr


NO_TORCH_RUN = """
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
from typer.testing import CliRunner
import edgedf.cli
r = CliRunner().invoke(edgedf.cli.app, ["run", sys.argv[1], "--json", sys.argv[2]])
assert r.exit_code == 0, r.output
assert not any(m.startswith(("torch", "edgedf.train", "edgedf.export")) for m in sys.modules if sys.modules[m]), "torch"
print("ok")
"""


def test_run_with_default_bundle_needs_no_torch(tmp_path):
    img = tmp_path / "face.jpg"
    cv2.imwrite(str(img), face_frames(1)[0])
    out = tmp_path / "r.json"
    r = subprocess.run(  # cwd outside the checkout: the installed edgedf, not the source tree
        [sys.executable, "-c", NO_TORCH_RUN, str(img), str(out)], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert validated(out)["sources"][0]["video"]["n_crops"] == 1


@pytest.mark.slow
def test_real_video_from_shared_data(tmp_path):
    video = SHARED_DATA / "videos" / "real" / "hamilton_clip.mp4"
    if not video.is_file():
        pytest.skip("../shared/data is absent")
    out = tmp_path / "r.json"
    r = run(video, "--frames", "8", "--json", out)
    assert r.exit_code in (0, 1, 3), r.output
    s = validated(out)["sources"][0]
    assert s["info"]["width"] == 640 and s["video"]["n_frames_with_face"] >= 4


def test_schema_fields_are_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "report-schema.md").read_text()
    schema = load_schema()
    names = set(schema["required"]) | set(schema["$defs"]["source_ok"]["required"])
    names |= set(schema["$defs"]["video_ok"]["required"]) | set(schema["$defs"]["track"]["required"])
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"fields missing from docs/report-schema.md: {missing}"


def test_output_paths_checked_before_analysis_and_never_destroyed(tiny_bundle, face_video, tmp_path):
    import stat

    for target, message in (("/dev/full", "not a regular file"), (str(tmp_path), "is a directory"),
                            (str(tmp_path / "no" / "r.json"), "does not exist")):  # fmt: skip
        r = run(face_video, "--bundle", tiny_bundle, "--json", target)
        assert r.exit_code == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.output
        assert "Verdict" not in r.stdout  # refused before the analysis, not after it
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # the device is still a device
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = run(face_video, "--bundle", tiny_bundle, "--plot", fifo)
    assert r.exit_code == 2 and "not a regular file" in r.stderr and stat.S_ISFIFO(os.stat(fifo).st_mode)
    # a symbolic link is written through: the link stays, its target gets the report
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    real.write_text("{}")
    link.symlink_to(real)
    assert run(face_video, "--bundle", tiny_bundle, "--json", link).exit_code == 0
    assert link.is_symlink() and validated(real)["sources"][0]["status"] == "ok"
    assert oct(real.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_empty_directory_and_fifo_are_reported_while_good_sources_run(tiny_bundle, face_video, tmp_path):
    empty, media = tmp_path / "empty", tmp_path / "media"
    empty.mkdir()
    media.mkdir()
    os.mkfifo(media / "stream.mp4")  # a FIFO with a media name: must not block, must not vanish
    out = tmp_path / "r.json"
    r = run(face_video, empty, media, "--bundle", tiny_bundle, "--json", out)
    assert r.exit_code == 1, r.output  # partly judged
    by_source = {Path(s["source"]).name: s for s in validated(out)["sources"]}
    assert by_source["face.mp4"]["status"] == "ok"
    assert "holds no images or videos" in by_source["empty"]["error"]
    assert "not a regular file" in by_source["stream.mp4"]["error"]


def test_backend_failure_is_one_sources_error_and_the_report_is_written(tiny_bundle, face_video, tmp_path):
    """A bundle whose model rejects the input its spec makes (ORT InvalidArgument): each source gets an
    error section and one line, the report is written, and no traceback masquerades as a result."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["preprocessing"]["input_size"] = 48  # the model takes 64 px
    (bad / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "r.json"
    r = run(face_video, face_video, "--bundle", bad, "--json", out)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.count("analysis failed: InvalidArgument") == 2 and r.stderr.count("\n") == 2
    assert [s["status"] for s in validated(out)["sources"]] == ["error", "error"]
    from edgedf.cli import DEBUG

    try:  # with --debug the error propagates with its traceback
        r = runner.invoke(app, ["--debug", "run", str(face_video), "--bundle", str(bad)])
        assert r.exception is not None and "analysis failed" not in r.stderr
    finally:
        DEBUG["on"] = False


def test_internal_error_has_its_own_exit_code_and_one_line(tiny_bundle, face_video, monkeypatch):
    import edgedf.runtime.report as report

    def broken(*a, **k):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(report, "exit_code", broken)  # a bug after the analysis, not bad input
    r = run(face_video, "--bundle", tiny_bundle, "--threshold", "0.5")  # (no uncalibrated-threshold warning)
    assert r.exit_code == 4 and "internal error: RuntimeError: simulated bug second line" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output


def test_annotate_odd_tiny_frames_never_cost_the_analysis(tiny_bundle, tmp_path):
    """1x1 and odd-sized stills: the annotated video is written at a size the encoder takes (even,
    16..4096 px), and the analysis is kept either way."""
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1, 3), np.uint8))
    odd = tmp_path / "odd.png"
    cv2.imwrite(str(odd), cv2.resize(face_frames(1)[0], (641, 361)))
    for img in (tiny, odd):
        out, vid = tmp_path / f"{img.stem}.json", tmp_path / f"{img.stem}.mp4"
        r = run(img, "--bundle", tiny_bundle, "--json", out, "--annotate", vid)
        assert r.exit_code in (0, 3), r.output  # the still has a face (judged) or none (unknown)
        (s,) = validated(out)["sources"]
        assert s["status"] == "ok" and s["annotated"] == str(vid)
        cap = cv2.VideoCapture(str(vid))
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        cap.release()
        assert (w, h) == ((16, 16) if img is tiny else (640, 360))
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
