"""`edgedf bench` on tiny bundles made here: real ONNX Runtime and OpenVINO runs, the status logic, JSON + log,
--floor, and accuracy checked against scoring the same crops directly."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from devices_helpers import export, tiny_checkpoint
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from edgedf.cli import app
from edgedf.devices.bench import BenchOptions, bench, parity_verdict, run_facts
from edgedf.devices.data import face_crops, list_labelled
from edgedf.runtime.backends import available, open_classifier
from edgedf.runtime.bundle import load_bundle
from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.parity import STORED

runner = CliRunner()
ENV = {"COLUMNS": "250"}
FAST = ["--runs", "3", "--warmup", "1"]


@pytest.fixture(scope="module")
def bench_run(bundles, labelled, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_out")
    names = ["ort_fp32", "cpu_ternary", "jetson_ternary", "bad_parity", "no_parity", "bad_reference"]
    r = runner.invoke(
        app, ["bench", *(str(bundles[n]) for n in names), "--data", str(labelled), *FAST, "--out", str(out)], env=ENV
    )
    assert r.exit_code == 0, r.output
    (jpath,) = out.glob("bench-*.json")
    return r.output, json.loads(jpath.read_text()), out


def test_statuses(bench_run):
    output, result, _ = bench_run
    rows = {r["bundle"].rsplit("/", 1)[-1]: r for r in result["rows"]}
    assert rows["ort_fp32"]["icon"] == "✅" and rows["ort_fp32"]["backend"] == "ort"
    assert rows["cpu_ternary"]["icon"] == "✅" and rows["cpu_ternary"]["backend"] == "openvino"
    # every bundle is checked here on the reference crops it carries, against the PyTorch logits stored with them
    for name in ("ort_fp32", "cpu_ternary"):
        on_device = rows[name]["parity"]["on_device"]
        assert on_device["reference"] == STORED and on_device["crops"] == 16, on_device
    assert rows["ort_fp32"]["parity"]["on_device"]["max_abs_dp"] < 1e-4
    # ... and a machine whose outputs differ from the export machine's fails, whatever was recorded at export
    assert rows["bad_reference"]["icon"] == "❎" and "on-device parity" in rows["bad_reference"]["reason"]
    assert "reference crops decided otherwise" in rows["bad_reference"]["reason"]
    if not available("tensorrt"):
        assert rows["jetson_ternary"]["icon"] == "❌"
        assert rows["jetson_ternary"]["reason"] == "tensorrt not installed"
    assert rows["bad_parity"]["icon"] == "❎" and "90.0%" in rows["bad_parity"]["reason"]
    assert rows["no_parity"]["icon"] == "❎" and "no parity recorded" in rows["no_parity"]["reason"]
    for col in ("Target", "Backend", "Precision", "Status", "AUC frame", "faces/s b8", "✅", "❎", "❌"):
        assert col in output


def test_measurements(bench_run, bundles, labelled):
    _, result, _ = bench_run
    row = next(r for r in result["rows"] if r["bundle"] == str(bundles["ort_fp32"]))
    lat = row["latency"]
    assert set(lat) == {"1", "8"} and lat["1"]["runs"] == 3
    assert 0 < lat["1"]["median_ms"] <= lat["1"]["p90_ms"] <= lat["1"]["p99_ms"]
    assert row["faces_s_b8"] == pytest.approx(8e3 / lat["8"]["median_ms"], rel=1e-3)
    assert row["peak_rss_mb"] > 20  # a Python process with numpy and ONNX Runtime
    b = load_bundle(bundles["ort_fp32"])
    assert row["size_mb"] == pytest.approx(b.manifest["files"]["model.onnx"]["bytes"] / 1e6, abs=1e-3)
    # frame AUC equals scoring the same aligned crops directly and asking scikit-learn
    fc = face_crops(list_labelled(labelled), b.spec)
    assert len(fc.crops) == 8 and not fc.no_face
    p = open_classifier(b).p_fake(b.spec.to_input(fc.crops, "BGR"))
    assert row["auc_frame"] == pytest.approx(roc_auc_score(fc.labels, p), abs=1e-4)
    assert row["auc_video"] is None  # still images only
    assert row["accuracy"]["crops"] == 8 and row["accuracy"]["fake_crops"] == 4


def test_rounds_pool_every_round_s_samples(bundles):
    """--rounds 3: each bundle timed in three fresh processes, in turn; the statistics are over all samples."""
    res = bench([bundles["ort_fp32"], bundles["cpu_ternary"]], BenchOptions(runs=2, warmup=1, rounds=3))
    assert res["options"]["rounds"] == 3 and "6 timed runs per batch size in 3 rounds" in run_facts(res)
    for row in res["rows"]:
        assert row["status"] == "pass", row
        for b, lat in row["latency"].items():
            ms = np.asarray(lat["samples_ms"])
            assert lat["runs"] == len(ms) == 6
            assert lat["median_ms"] == pytest.approx(np.median(ms), abs=1e-3)
            assert lat["p90_ms"] == pytest.approx(np.percentile(ms, 90), abs=1e-3)
            assert lat["p99_ms"] == pytest.approx(np.percentile(ms, 99), abs=1e-3)
            assert lat["faces_per_s"] == pytest.approx(1e3 * int(b) / np.median(ms), rel=1e-3)
        assert row["ms_b1"] == row["latency"]["1"]["median_ms"]
        assert row["faces_s_b8"] == row["latency"]["8"]["faces_per_s"]
    with pytest.raises(EdgedfError, match="--rounds"):
        bench([bundles["ort_fp32"]], BenchOptions(rounds=0))


def test_json_table_and_log(bench_run, bundles, tmp_path):
    _, result, out = bench_run
    assert result["kind"] == "edgedf-bench" and result["host"]["cores"] >= 1
    assert "| Target | Backend | Precision | Status |" in (out / "bench.md").read_text()
    log = out / "bench.log.jsonl"
    assert len(log.read_text().splitlines()) == 1
    r = runner.invoke(app, ["bench", str(bundles["ort_fp32"]), *FAST, "--batch", "2", "--out", str(out)], env=ENV)
    assert r.exit_code == 0, r.output
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["rows"][0]["latency"].keys() == {"2"}
    assert len(list(out.glob("bench-*.json"))) == 2
    # the columns name the batch sizes timed, and the table says what its figures rest on
    assert "ms/face b2" in r.output and "faces/s b2" in r.output and "faces/s b8" not in r.output
    assert "3 timed runs per batch size after 1 warm-up" in r.output and "load average" in r.output
    assert "(p99 of so few runs is close to their maximum)" in (out / "bench.md").read_text()
    row = json.loads(lines[1])["rows"][0]
    assert row["faces_s_b8"] == pytest.approx(2e3 / row["latency"]["2"]["median_ms"], rel=1e-3)


def test_strict_fails_on_any_row_that_does_not_pass(bundles, tmp_path):
    ok = ["bench", str(bundles["ort_fp32"]), *FAST, "--out", str(tmp_path), "--strict"]
    assert runner.invoke(app, ok, env=ENV).exit_code == 0
    r = runner.invoke(app, [*ok, str(bundles["bad_parity"])], env=ENV)
    assert r.exit_code == 1 and "--strict: 1 bundle(s) did not pass" in r.output and "bad_parity" in r.output
    r = runner.invoke(app, ["bench", str(bundles["bad_parity"]), *FAST, "--out", str(tmp_path)], env=ENV)
    assert r.exit_code == 0  # without --strict a failed row is reported, not an error


def test_floor_exit_codes(bundles, coin_flip, tmp_path):
    # the same images are real and fake: every model scores AUC exactly 0.5
    args = ["bench", str(bundles["ort_fp32"]), "--data", str(coin_flip), *FAST, "--out", str(tmp_path)]
    r = runner.invoke(app, [*args, "--floor", "0.6"], env=ENV)
    assert r.exit_code == 1, r.output
    assert "below floor" in r.output and "❎" in r.output
    r = runner.invoke(app, [*args, "--floor", "0.5"], env=ENV)
    assert r.exit_code == 0, r.output


def test_bad_input(bundles, tmp_path):
    r = runner.invoke(app, ["bench", str(bundles["ort_fp32"]), "--floor", "0.7", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--floor needs --data" in r.output
    r = runner.invoke(app, ["bench", str(bundles["ort_fp32"]), "--batch", "1,x", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "comma-separated" in r.output
    # a missing bundle is one ❌ row; the others still run
    res = bench([tmp_path / "nope", bundles["ort_fp32"]], BenchOptions(runs=2, warmup=1))
    assert res["rows"][0]["icon"] == "❌" and "not found" in res["rows"][0]["reason"]
    assert res["rows"][1]["icon"] == "✅"


def test_peak_rss_is_the_childs_own(bundles):
    # the parent holds 400 MB; a bundle's process must not inherit that figure (ru_maxrss does across exec)
    ballast = np.ones(400 * 2**20 // 8)
    res = bench([bundles["ort_fp32"]], BenchOptions(runs=2, warmup=1))
    assert ballast.sum() > 0
    assert 20 < res["rows"][0]["peak_rss_mb"] < 300


@pytest.mark.slow
def test_peak_rss_counts_the_model_it_ran(bundles, tmp_path):
    """Peak RSS is read after the model is loaded and run: a bundle with about 57 MB more weights shows them (read
    before the load, both processes would show the same interpreter and libraries)."""
    wide = export(tiny_checkpoint("fp", tmp_path / "ck", dim=768), "ort", "fp32", tmp_path / "wide")
    res = bench([bundles["ort_fp32"], wide], BenchOptions(runs=2, warmup=1))
    small, big = (r["peak_rss_mb"] for r in res["rows"])
    weights_mb = load_bundle(wide).manifest["files"]["model.onnx"]["bytes"] / 1e6
    assert weights_mb > 50 and big - small > 0.8 * weights_mb, (small, big, weights_mb)


def test_target_override_runs_ort_bundle_on_openvino(bundles):
    res = bench([bundles["ort_fp32"]], BenchOptions(target="cpu", runs=2, warmup=1))
    (row,) = res["rows"]
    assert row["target"] == "cpu" and row["backend"] == "openvino" and row["icon"] == "✅"
    assert row["parity"]["on_device"]["decisive_agreement"] >= 0.99


def test_parity_verdict_rules():
    ok = {"status": "ok", "agreement": 1.0, "decisive_agreement": 1.0}
    bad = {"status": "ok", "agreement": 0.97, "decisive_agreement": 0.97}
    m = {"parity": {"backends": {"ort": ok, "openvino": {"status": "not installed"}}}}
    assert parity_verdict(m, "ort", None)[0]
    assert not parity_verdict(m, "openvino", None)[0]  # not verified on that backend at export
    assert not parity_verdict(m, "ort", bad)[0]  # recorded fine, fails on this device
    assert not parity_verdict({"parity": {"backends": {"ort": bad}}}, "ort", None)[0]
    # TensorRT: the export machine's ORT/OpenVINO runs are its recorded proxy
    assert parity_verdict(m, "tensorrt", None)[0]


def test_devices_never_import_torch():
    import subprocess

    code = (
        "import sys, edgedf.devices.bench, edgedf.devices.report, edgedf.devices.worker, edgedf.commands.bench; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_videos_give_video_auc_and_stage_timings(bundles, tmp_path):
    from devices_helpers import astronaut_bgr

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "runtime"))
    from runtime_media import face_frames, write_h264

    for label, k in (("real", 0), ("fake", 1)):
        (tmp_path / "v" / label).mkdir(parents=True)
        frames = face_frames(10, size=(320, 240))
        if k:
            frames = [np.clip(f.astype(np.int16) + 40, 0, 255).astype(np.uint8) for f in frames]
        write_h264(tmp_path / "v" / label / f"{label}.mp4", frames, fps=10)
    assert astronaut_bgr().shape[2] == 3
    res = bench([bundles["ort_fp32"]], BenchOptions(data=[tmp_path / "v"], runs=2, warmup=1))
    (row,) = res["rows"]
    assert row["icon"] == "✅" and row["auc_video"] in (0.0, 1.0)  # one real, one fake video
    assert row["frames_analysed"] > 0 and row["stages_s"]["classify"] > 0 and row["stages_s"]["detect"] > 0
    assert res["data"] == {"images": 0, "videos": 2}
