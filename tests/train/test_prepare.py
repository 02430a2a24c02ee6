import json

import numpy as np
import pytest
from traindata import face_image, ffpp_tree, write_video

from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.spec import FaceCropSpec
from edgedf.train.data import read_index
from edgedf.train.prepare import PrepareOptions, list_items, prepare

SPEC = FaceCropSpec(input_size=48)


def by_video(records):
    out = {}
    for r in records:
        out.setdefault(r.video, []).append(r)
    return out


def test_ffpp_layout_splits_methods_and_frames(tmp_path):
    root = ffpp_tree(tmp_path / "ffpp")
    items = list_items(root, "ffpp", compressions=["c23"], methods=["Deepfakes", "FaceSwap"])
    assert len(items) == 4 + 2 * 2
    report = prepare(items, tmp_path / "crops", SPEC, PrepareOptions(frames=3), workers=2)
    assert report.unreadable == [] and report.no_face_frames == 0
    records, spec = read_index(tmp_path / "crops")
    assert spec == SPEC
    vids = by_video(records)
    assert len(vids) == 8 and all(len(v) == 3 for v in vids.values())  # K=3 of 6 frames each
    assert sorted({r.frame for r in vids["real/c23/000"]}) == [0, 2, 5]  # evenly spaced, first and last
    r = vids["Deepfakes/c23/003_002"][0]
    assert (r.label, r.method, r.compression, r.split, r.source) == (1, "Deepfakes", "c23", "test", "ffpp")
    assert vids["real/c23/001"][0].split == "train" and vids["real/c23/001"][0].label == 0
    assert vids["FaceSwap/c23/000_001"][0].split == "train"
    # landmarks are in crop pixels: near the template the aligner maps them to
    lm = np.array(r.landmarks)
    assert lm.shape == (5, 2) and (lm > 0).all() and (lm < 48).all()
    assert lm[0, 0] < lm[1, 0] and lm[3, 1] > lm[0, 1]  # left eye left of right eye; mouth below eyes
    import cv2

    crop = cv2.imread(str(tmp_path / "crops" / r.path))
    assert crop.shape == (48, 48, 3)


def test_celebdf_and_dfdc_layouts(tmp_path):
    cdf = tmp_path / "celebdf"
    write_video(cdf / "Celeb-real" / "id0_0000.mp4", n=3)
    write_video(cdf / "YouTube-real" / "00000.mp4", n=3, seed=1)
    write_video(cdf / "Celeb-synthesis" / "id0_id1_0000.mp4", n=3, seed=2)
    (cdf / "List_of_testing_videos.txt").write_text("1 YouTube-real/00000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n")
    items = {it.video: it for it in list_items(cdf, "celebdf")}
    assert items["Celeb-real/id0_0000"].split == "train" and items["Celeb-real/id0_0000"].label == 0
    assert items["YouTube-real/00000"].split == "test"
    assert items["Celeb-synthesis/id0_id1_0000"].label == 1 and items["Celeb-synthesis/id0_id1_0000"].split == "test"

    dfdc = tmp_path / "dfdc" / "dfdc_train_part_0"
    write_video(dfdc / "aaa.mp4", n=3)
    write_video(dfdc / "bbb.mp4", n=3, seed=1)
    (dfdc / "metadata.json").write_text(
        json.dumps({"aaa.mp4": {"label": "REAL"}, "bbb.mp4": {"label": "FAKE", "original": "aaa.mp4"}})
    )
    report = prepare(list_items(tmp_path / "dfdc", "dfdc"), tmp_path / "crops", SPEC, PrepareOptions(frames=2))
    records, _ = read_index(tmp_path / "crops")
    labels = {r.video: r.label for r in records}
    assert labels == {"dfdc_train_part_0/aaa": 0, "dfdc_train_part_0/bbb": 1}
    assert report.crops == 4


def test_unreadable_and_faceless_are_counted_and_resume_skips_done(tmp_path):
    import cv2

    root = tmp_path / "set"
    (root / "real").mkdir(parents=True)
    cv2.imwrite(str(root / "real" / "a.jpg"), face_image(0))
    write_video(root / "fake" / "v.mp4", n=4)
    write_video(root / "fake" / "noface.mp4", n=4, face=False)
    (root / "fake" / "broken.mp4").write_bytes(b"\x00not a video at all" * 50)
    items = list_items(root, "folder")
    assert {it.video: it.label for it in items} == {
        "real/a": 0,
        "fake/v": 1,
        "fake/noface": 1,
        "fake/broken": 1,
    }
    out = tmp_path / "crops"
    report = prepare(items, out, SPEC, PrepareOptions(frames=4))
    assert report.no_face_frames == 4
    assert len(report.unreadable) == 1 and report.unreadable[0].startswith("fake/broken")
    assert report.crops == 1 + 4
    assert report.by_group == {"set/real": 1, "set/fake": 4}
    saved = json.loads((out / "report.json").read_text())
    assert saved["no_face_frames"] == 4 and len(saved["unreadable"]) == 1

    # an interrupted run: one part missing, the index gone -> only that source is redone
    (out / "index.jsonl").unlink()
    part = next(p for p in (out / "parts").iterdir() if json.loads(p.read_text())["video"] == "fake/v")
    part.unlink()
    report2 = prepare(items, out, SPEC, PrepareOptions(frames=4))
    assert report2.resumed == 3 and report2.crops == 5
    with pytest.raises(EdgedfError, match="another preprocessing spec"):
        prepare(items, out, FaceCropSpec(input_size=64), PrepareOptions(frames=4))


def test_bad_layouts_fail_with_one_line(tmp_path):
    with pytest.raises(EdgedfError, match="not found"):
        list_items(tmp_path / "nope", "folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgedfError, match="neither real/ nor fake/"):
        list_items(tmp_path / "empty", "folder")
    with pytest.raises(EdgedfError, match="split file missing"):
        list_items(tmp_path / "empty", "ffpp")
    with pytest.raises(EdgedfError, match="unknown format"):
        list_items(tmp_path / "empty", "vox")


def _tight_crop(i: int) -> np.ndarray:
    """The astronaut's face cut as tightly as DFDC's crops (no forehead, chin at the edge), 224 px."""
    import cv2

    from edgedf.runtime.detect import open_detector

    img = face_image(i, size=256)
    box = open_detector("retinaface").detect(img).boxes[0]
    x1, y1, x2, y2 = box.astype(int)
    h = y2 - y1
    face = img[y1 + h // 6 : y2, x1:x2]  # cut at the brows and the chin
    return cv2.resize(face, (224, 224))


def _labels_tree(root):
    """dfdc-like: train/ and dev/ with labels.csv; ffpp-like frames with target ids at the root level."""
    import cv2

    for split, n in (("train", 4), ("dev", 2)):
        d = root / "dfdc" / split
        (d / "real").mkdir(parents=True)
        (d / "fake").mkdir()
        lines = ["file,label,source_video,native_w,native_h"]
        for i in range(n):
            lab = ("real", "fake")[i % 2]
            cv2.imwrite(str(d / lab / f"v{i}.jpg"), _tight_crop(i))
            lines.append(f"{lab}/v{i}.jpg,{lab},src{i // 2},155,155")
        (d / "labels.csv").write_text("\n".join(lines) + "\n")
    f = root / "ffpp"
    (f / "original").mkdir(parents=True)
    (f / "Deepfakes").mkdir()
    lines = ["file,label,method,video,target_id,source_id"]
    for k, (vid, tgt) in enumerate((("000", "000"), ("003", "003"))):
        for fr in range(2):
            cv2.imwrite(str(f / "original" / f"{vid}_f{fr}.jpg"), face_image(k * 2 + fr, 256))
            lines.append(f"original/{vid}_f{fr}.jpg,real,original,{vid},{tgt},")
    cv2.imwrite(str(f / "Deepfakes" / "003_002_f0.jpg"), face_image(7, 256))
    lines.append("Deepfakes/003_002_f0.jpg,fake,Deepfakes,003_002,003,002")
    (f / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def test_labels_format_splits_groups_and_padding(tmp_path):
    root = _labels_tree(tmp_path / "data")
    items = list_items(root / "dfdc", "labels")
    assert {(it.split, it.label) for it in items} == {("train", 0), ("train", 1), ("val", 0), ("val", 1)}
    # tight crops: with the border the detector finds every face; the crop is cut from the original pixels
    report = prepare(items, tmp_path / "dfdc_crops", SPEC, PrepareOptions(pad=0.3))
    assert report.crops == 6 and report.no_face_frames == 0
    records, _ = read_index(tmp_path / "dfdc_crops")
    assert {r.method for r in records if r.label} == {"fake"} and {r.method for r in records if not r.label} == {""}
    import cv2

    crop = cv2.imread(str(tmp_path / "dfdc_crops" / records[0].path))
    assert (crop.reshape(-1, 3) == 127).all(axis=1).mean() < 0.05  # no grey detection border in the crop

    splits = ffpp_tree(tmp_path / "ffpp_tree") / "splits"  # official-style train 000/001, test 002/003
    ff = list_items(root / "ffpp", "labels", splits_dir=splits)
    split_of = {it.path.rsplit("/", 1)[-1]: it.split for it in ff}
    assert split_of["000_f0.jpg"] == "train" and split_of["003_f1.jpg"] == "test"
    assert split_of["003_002_f0.jpg"] == "test"
    prepare(ff, tmp_path / "ff_crops", SPEC, PrepareOptions())
    recs, _ = read_index(tmp_path / "ff_crops")
    videos = {r.video for r in recs}
    assert videos == {"000", "003", "003_002"}  # frames of a video share its id: video-level metrics pool them
    assert {r.method for r in recs if r.label} == {"Deepfakes"}


def test_labels_format_bad_input(tmp_path):
    with pytest.raises(EdgedfError, match="no labels.csv"):
        list_items(tmp_path, "labels")
    (tmp_path / "labels.csv").write_text("file,label\na.jpg,maybe\n")
    with pytest.raises(EdgedfError, match="not real, fake"):
        list_items(tmp_path, "labels")
    (tmp_path / "labels.csv").write_text("file,label\n../a.jpg,real\n")
    with pytest.raises(EdgedfError, match="relative"):
        list_items(tmp_path, "labels")
    (tmp_path / "labels.csv").write_text("name,kind\na.jpg,real\n")
    with pytest.raises(EdgedfError, match="file and label"):
        list_items(tmp_path, "labels")


def test_detection_border_keeps_frame_coordinates():
    from edgedf.runtime.detect import open_detector
    from edgedf.train.prepare import _detect_padded

    det = open_detector("retinaface")
    img = face_image(3, size=256)
    plain, padded = det.detect(img), _detect_padded(det, img, 0.3)
    assert len(plain) == len(padded) == 1
    assert np.abs(plain.landmarks[0] - padded.landmarks[0]).max() < 3.0
    assert np.abs(plain.boxes[0] - padded.boxes[0]).max() < 6.0


@pytest.mark.ray
def test_prepare_on_ray_matches_local_and_resumes(tmp_path):
    """The same per-source units as Ray tasks on a real local instance: the same crops and index as one
    process, the index assembled once by the driver, and a rerun resumes."""
    ray = pytest.importorskip("ray")
    from edgedf.runtime.scale import ray_init

    root = ffpp_tree(tmp_path / "ffpp")
    items = list_items(root, "ffpp", compressions=["c23"], methods=["Deepfakes"])
    local = prepare(items, tmp_path / "local", SPEC, PrepareOptions(frames=3))
    ray_init("local")
    try:
        dist = prepare(items, tmp_path / "ray", SPEC, PrepareOptions(frames=3), use_ray=True)
        assert dist == local and dist.crops == 6 * 3
        assert (tmp_path / "ray" / "index.jsonl").read_text() == (tmp_path / "local" / "index.jsonl").read_text()
        recs, _ = read_index(tmp_path / "ray")
        for r in recs:  # the crops themselves, byte for byte
            assert (tmp_path / "ray" / r.path).read_bytes() == (tmp_path / "local" / r.path).read_bytes()
        again = prepare(items, tmp_path / "ray", SPEC, PrepareOptions(frames=3), use_ray=True)
        assert again.resumed == len(items) and again.crops == dist.crops
    finally:
        ray.shutdown()
