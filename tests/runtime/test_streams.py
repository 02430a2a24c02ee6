"""Live streams, served on loopback by a real HTTP server (MJPEG, as IP cameras serve it): a stall is noticed
after --stream-timeout, a lost live stream is reopened with back-off, and when it cannot be the source ends
partial with a warning and exit code 5, judged on what was seen."""

from __future__ import annotations

import json

from runtime_media import MjpegServer
from typer.testing import CliRunner

from edgedf.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["run", *map(str, args)], env={"COLUMNS": "200"})


def test_stalled_stream_reconnects_then_ends_partial(tiny_bundle, tmp_path):
    cam = MjpegServer([("serve", 30, "stall"), ("serve", 20, "close")])  # then refused
    out = tmp_path / "r.json"
    try:
        r = run(cam.url, "--bundle", tiny_bundle, "--every", "1", "--stream-timeout", "1", "--reconnect", "1",
                "--json", out)  # fmt: skip
    finally:
        cam.close()
    assert r.exit_code == 5, r.output  # judged, but only in part
    (s,) = json.loads(out.read_text())["sources"]
    assert s["status"] == "partial" and s["video"]["verdict"] in ("real", "fake")
    assert s["sampling"]["frames_analysed"] == 50  # both connections' frames
    assert any("reconnected (attempt 1)" in w for w in s["warnings"])
    assert any("stalled or ended" in w and "1 reconnect attempts" in w for w in s["warnings"])
    assert "warning:" in r.output and "stalled or ended" in r.output  # on the console, not only in the JSON
    assert cam.connections[0] == 3  # the stall, the reconnect, the refused retry


def test_no_reconnect_means_one_stall_ends_it(tiny_bundle, tmp_path):
    cam = MjpegServer([("serve", 15, "stall"), ("serve", 15, "close")])
    try:
        r = run(cam.url, "--bundle", tiny_bundle, "--every", "1", "--stream-timeout", "1", "--reconnect", "0")
    finally:
        cam.close()
    assert r.exit_code == 5 and "no reconnect (--reconnect 0)" in r.output, r.output
    assert cam.connections[0] == 1


def test_bad_stream_options(tiny_bundle):
    r = run("http://127.0.0.1:9/x", "--bundle", tiny_bundle, "--stream-timeout", "0")
    assert r.exit_code == 2 and "--stream-timeout must lie in" in r.output
    r = run("http://127.0.0.1:9/x", "--bundle", tiny_bundle, "--reconnect", "-1")
    assert r.exit_code == 2 and "--reconnect must be >= 0" in r.output


def test_unreadable_sources_are_found_before_any_model_loads(tiny_bundle, tmp_path):
    """A typo costs nothing: with only unreadable sources no model is opened (a detector that cannot be
    opened would otherwise be the error), and each source is its own one-line error."""
    (tmp_path / "empty.mp4").write_bytes(b"")
    r = run(tmp_path / "missing.mp4", tmp_path / "empty.mp4", "--bundle", tiny_bundle,
            "--detector", "yunet:/nonexistent/yunet.onnx")  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "file not found" in r.output and "is empty (0 bytes)" in r.output
    assert "yunet" not in r.output
