"""`edgedf study` end to end on tiny checkpoints made here (one target, to stay quick)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from devices_helpers import chromium, render_in_browser, tiny_checkpoint, tiny_qat_checkpoint
from typer.testing import CliRunner

from edgedf.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_study_on_tiny_checkpoints(tmp_path, labelled, coin_flip):
    pytest.importorskip("torch")
    fp, bit = tiny_checkpoint("fp", tmp_path / "fp"), tiny_checkpoint("bit", tmp_path / "bit")
    qat = tiny_qat_checkpoint(tmp_path / "qat")
    out = tmp_path / "study"
    args = ["study", "--data", str(labelled), "--data", str(coin_flip), "--fp", str(fp), "--bit", str(bit)]
    args += ["--qat", str(qat), "--targets", "ort", "--runs", "3", "--verify-n", "32"]
    r = runner.invoke(app, [*args, "--work", str(tmp_path / "work"), "--out", str(out)], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    study = json.loads((out / "study.json").read_text())
    assert study["kind"] == "edgedf-study"
    comp = {c["precision"]: c for c in study["comparison"]}
    assert set(comp) == {"fp32", "int8-ptq", "int8-qat", "ternary"}
    assert comp["fp32"]["status"] == "pass" and all(c["status"] in ("pass", "fail") for c in comp.values()), comp
    assert comp["fp32"]["d_auc_frame"] == 0.0 and comp["fp32"]["speedup_b1_vs_fp32"] == 1.0
    assert comp["ternary"]["size_vs_fp32"] < 1.0  # 2-bit block weights
    # per data set AUC; the coin-flip set (same images real and fake) is exactly 0.5 for every arm
    assert all(c["auc_frame_by_set"]["coinflip"] == 0.5 for c in comp.values())
    assert all(c["auc_frame_by_set"]["labelled"] is not None for c in comp.values())
    # the comparison renders: a checkpoints table and the comparison table, plots embedded
    md = (out / "study.md").read_text()
    assert "Δ AUC frame" in md and "int8-qat" in md
    assert "3 timed runs per batch size after 10 warm-up" in md and "flags" in md and "backends: ort " in md

    class P(HTMLParser):
        imgs = 0
        tables = 0

        def handle_starttag(self, tag, attrs):
            P.imgs += tag == "img" and dict(attrs)["src"].startswith("data:image/png;base64,")
            P.tables += tag == "table"

    P().feed((out / "study.html").read_text())
    assert P.tables == 2 and P.imgs == 2  # latency vs AUC, size (no videos: no stage plot)
    if chromium() is not None:  # a real browser at 1280 px: nothing runs off the page, facts in words
        seen = render_in_browser(out / "study.html")
        assert seen["scrollWidth"] <= seen["clientWidth"] <= 1280, seen
        assert not any("{" in c for c in seen["cells"])  # no raw JSON in a cell (these checkpoints: "-")
    # missing checkpoints without a recipe: one line, exit 2
    r = runner.invoke(app, ["study", "--data", str(labelled), "--fp", str(fp), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--recipe" in r.output


def test_study_reuses_a_bundle_only_from_the_same_checkpoint(tmp_path, bundles):
    """--work keeps exports between runs; one made from another checkpoint (retrained, swapped) is not
    benched under the new checkpoint's name."""
    pytest.importorskip("torch")
    import shutil

    from edgedf.commands.study import bundle_from
    from edgedf.runtime.bundle import load_bundle

    b = load_bundle(bundles["ort_fp32"])
    other = tiny_checkpoint("fp", tmp_path / "fp", seed=1)  # the bundle came from seed 0's weights
    assert not bundle_from(bundles["ort_fp32"], other)
    assert bundle_from(bundles["ort_fp32"], tiny_checkpoint("fp", tmp_path / "fp0", seed=0))
    assert not bundle_from(tmp_path / "nothing", other)
    same = tmp_path / "same"
    shutil.copytree(bundles["ort_fp32"], same)
    m = json.loads((same / "manifest.json").read_text())
    from edgedf.runtime.fsutil import sha256_file

    m["model"]["checkpoint_sha256"] = sha256_file(other / "model.safetensors")
    (same / "manifest.json").write_text(json.dumps(m))
    assert bundle_from(same, other) and b.manifest["model"]["checkpoint_sha256"] != m["model"]["checkpoint_sha256"]


def test_compare_signs():
    """Deltas are arm minus fp32 on the same target (a worse AUC is negative), speed-ups fp32's time over the arm's
    (faster is above 1), sizes the arm's over fp32's; a target without an fp32 row gets no deltas."""
    from edgedf.commands.study import compare

    def row(target, precision, auc, ms, fps, mb):
        return {"target": target, "backend": "ort", "precision": precision, "status": "pass", "icon": "✅",
                "auc_frame": auc, "auc_video": None, "ms_b1": ms, "faces_s_b8": fps, "size_mb": mb}  # fmt: skip

    rows = [row("ort", "ternary", 0.70, 2.0, 800.0, 3.0), row("ort", "fp32", 0.75, 4.0, 400.0, 12.0),
            row("cpu", "int8-ptq", 0.9, 1.0, 10.0, 1.0)]  # fmt: skip
    tern, fp, cpu = compare(rows)
    assert tern["d_auc_frame"] == -0.05 and fp["d_auc_frame"] == 0.0
    assert tern["speedup_b1_vs_fp32"] == 2.0 and tern["speedup_b8_vs_fp32"] == 2.0
    assert tern["size_vs_fp32"] == 0.25 and tern["d_auc_video"] is None
    assert "d_auc_frame" not in cpu and "speedup_b8_vs_fp32" not in cpu
