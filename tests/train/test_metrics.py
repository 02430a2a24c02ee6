import numpy as np
import pytest

from edgedf.train.metrics import Scored, binary_metrics, eer, evaluate


def test_binary_metrics_perfect_and_inverted():
    y = [0, 0, 0, 1, 1, 1]
    m = binary_metrics(y, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert m["auc"] == 1.0 and m["ap"] == 1.0 and m["eer"] == 0.0 and m["acc"] == 1.0
    m = binary_metrics(y, [0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    assert m["auc"] == 0.0 and m["eer"] == 1.0 and m["acc"] == 0.0


def test_eer_where_error_rates_cross():
    # 4 reals, 4 fakes, one of each on the wrong side: FPR = FNR = 0.25 at the crossing
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.75, 0.6, 0.8, 0.85, 0.9])
    assert eer(y, s) == pytest.approx(0.25)
    assert binary_metrics(y, s, threshold=0.7)["acc"] == pytest.approx(6 / 8)


def test_single_class_has_no_auc():
    m = binary_metrics([1, 1], [0.2, 0.9])
    assert m["auc"] is None and m["eer"] is None and m["acc"] == 0.5


def test_video_level_is_mean_of_frames_and_methods_get_the_reals():
    items = [
        # real video r1: frames 0.1, 0.3 -> 0.2; real r2: 0.6, 0.8 -> 0.7 (frame-level: one real high)
        Scored(0.1, 0, "r1", "ffpp"),
        Scored(0.3, 0, "r1", "ffpp"),
        Scored(0.6, 0, "r2", "ffpp"),
        Scored(0.8, 0, "r2", "ffpp"),
        # Deepfakes video f1: 0.9, 0.7 -> 0.8; FaceSwap f2: 0.65, 0.55 -> 0.6
        Scored(0.9, 1, "f1", "ffpp/Deepfakes"),
        Scored(0.7, 1, "f1", "ffpp/Deepfakes"),
        Scored(0.65, 1, "f2", "ffpp/FaceSwap"),
        Scored(0.55, 1, "f2", "ffpp/FaceSwap"),
    ]
    out = evaluate(items)
    assert set(out) == {"ffpp", "ffpp/Deepfakes", "ffpp/FaceSwap", "all"}
    assert out["ffpp"]["frame_auc"] is None  # reals only
    df = out["ffpp/Deepfakes"]
    assert df["videos"] == 3 and df["frames"] == 6  # its 1 video + the 2 real videos
    assert df["video_auc"] == 1.0  # 0.8 > 0.7 > 0.2
    assert df["frame_auc"] == pytest.approx(7 / 8)  # 0.7 < 0.8 is the one mis-ordered pair
    fs = out["ffpp/FaceSwap"]
    assert fs["video_auc"] == pytest.approx(0.5)  # 0.6 beats 0.2 but not 0.7
    assert out["all"]["videos"] == 4 and out["all"]["frames"] == 8
