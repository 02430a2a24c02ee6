import json

import cv2
import pytest
from traindata import face_image
from typer.testing import CliRunner

from edgedf.cli import app
from edgedf.train.checkpoint import load_checkpoint

runner = CliRunner()
TINY = ["model.preset=null", "model.dim=32", "model.depth=1", "model.heads=2", "model.patch_size=8"]


@pytest.fixture(scope="module")
def trained(face_crops, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    r = runner.invoke(
        app,
        ["train", "--crops", str(face_crops), "--out", str(out), "--max-steps", "3", "--batch-size", "8",
         "--workers", "0", "--no-progress", *TINY, "eval_every=3", "max_val=8", "warmup_steps=1"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "done" in r.output
    return out


def test_train_cli_writes_a_checkpoint(trained):
    ck = load_checkpoint(trained / "model")
    assert ck.config.variant == "bit" and ck.config.dim == 32 and ck.meta["step"] == 3


def test_eval_cli_on_crops_and_raw_folders(trained, face_crops, tmp_path):
    # a raw real/ + fake/ folder: prepared with the checkpoint's own spec (32 px) into the cache
    raw = tmp_path / "devset"
    for i in range(3):
        for label in ("real", "fake"):
            (raw / label).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(raw / label / f"{i}.jpg"), face_image(10 + i + (label == "fake") * 5))
    out_json = tmp_path / "eval.json"
    r = runner.invoke(
        app,
        ["eval", str(trained / "model"), str(raw), "--cache", str(tmp_path / "cache"), "--json", str(out_json),
         "-j", "1"],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads(out_json.read_text())
    m = res["datasets"]["devset"]["devset"]
    assert m["frames"] == 6 and m["videos"] == 6 and 0 <= m["frame_auc"] <= 1
    assert "devset" in r.output and "Frame AUC" in r.output
    crops = next((tmp_path / "cache").iterdir())
    assert (crops / "index.jsonl").is_file()

    # two sets: one row group each plus the pooled row (the cross-dataset protocol)
    r = runner.invoke(app, ["eval", str(trained / "model"), str(raw), str(crops), "--cache", str(tmp_path / "cache"),
                            "--json", str(out_json)], env={"COLUMNS": "200"})  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads(out_json.read_text())
    assert res["pooled"]["frames"] == 12 and len(res["datasets"]) == 2

    # a missing dataset is refused in one line
    r = runner.invoke(app, ["eval", str(trained / "model"), str(face_crops.parent / "nope")])
    assert r.exit_code == 2


def test_prepare_cli_and_bad_input(faces_folder, tmp_path):
    r = runner.invoke(
        app,
        ["prepare", str(faces_folder), "--label", "real", "--size", "32", "--out", str(tmp_path / "c"), "-j", "1"],
    )
    assert r.exit_code == 0, r.output
    assert "12 crops" in r.output and "0 frames without a face" in r.output
    r = runner.invoke(app, ["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "c2")])
    assert r.exit_code == 2 and "not found" in r.output
    r = runner.invoke(app, ["train", "--crops", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "not a crops folder" in r.output
    r = runner.invoke(app, ["train", "learning_rate=3"])
    assert r.exit_code == 2 and "unknown training config field" in r.output
