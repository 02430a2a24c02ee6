import numpy as np
import pytest
from runtime_media import astronaut_bgr, face_frames

from edgedf.runtime.backends import BackendOptions, available
from edgedf.runtime.detect import Faces, open_detector
from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.track import Tracker, iou_matrix

# the astronaut's face in skimage.data.astronaut() (512x512): box about (178, 57)-(273, 177)
ASTRO_BOX = np.array([178, 57, 273, 177], np.float32)


@pytest.fixture(scope="module")
def retina():
    return open_detector("retinaface", "ort", BackendOptions(threads=1))


def test_retinaface_finds_the_face_with_landmarks(retina):
    faces = retina.detect(astronaut_bgr())
    assert len(faces) == 1 and faces.scores[0] > 0.9
    assert iou_matrix(faces.boxes, ASTRO_BOX[None])[0, 0] > 0.8
    lm = faces.landmarks[0]
    b = faces.boxes[0]
    assert ((lm[:, 0] > b[0]) & (lm[:, 0] < b[2]) & (lm[:, 1] > b[1]) & (lm[:, 1] < b[3])).all()
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # left eye/mouth left of right eye/mouth
    assert lm[0, 1] < lm[2, 1] < lm[3, 1]  # eyes above nose above mouth


def test_retinaface_coordinates_follow_downscaling(retina):
    """A 2x larger image is downscaled to max_side before detection; boxes come back in its pixels."""
    import cv2

    big = cv2.resize(astronaut_bgr(), (1024, 1024))
    faces = retina.detect(big)
    assert len(faces) == 1
    assert iou_matrix(faces.boxes, ASTRO_BOX[None] * 2)[0, 0] > 0.8


def test_no_face_on_a_blank_frame(retina):
    assert len(retina.detect(np.full((360, 640, 3), 90, np.uint8))) == 0


@pytest.mark.skipif(not available("openvino"), reason="OpenVINO not installed")
def test_retinaface_on_openvino_matches_ort(retina):
    ov = open_detector("retinaface", "openvino")
    a, b = retina.detect(astronaut_bgr()), ov.detect(astronaut_bgr())
    assert len(a) == len(b) == 1
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1.5)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1.5)


def test_detector_errors(tmp_path):
    with pytest.raises(EdgedfError, match="unknown detector"):
        open_detector("mtcnn")
    with pytest.raises(EdgedfError, match="not found"):
        open_detector(f"yunet:{tmp_path}/none.onnx")
    with pytest.raises(EdgedfError, match="not found"):
        open_detector(f"insightface:{tmp_path}/none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EdgedfError, match="YuNet"):
        open_detector(f"yunet:{bad}")


def test_tensorrt_not_installed_is_one_clear_error():
    if available("tensorrt"):
        pytest.skip("TensorRT is installed here")
    with pytest.raises(EdgedfError, match="backend tensorrt is not installed"):
        open_detector("retinaface", "tensorrt")


def _face(x, y, s=100.0):
    box = np.array([x, y, x + s, y + s], np.float32)
    lm = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32) * s + [x, y]
    return box, lm


def _faces(*specs):
    if not specs:
        return Faces()
    boxes, lms = zip(*(_face(*s) for s in specs), strict=True)
    return Faces(np.stack(boxes), np.ones(len(specs), np.float32), np.stack(lms))


def test_tracker_keeps_ids_for_moving_faces_and_starts_new_ones():
    tr = Tracker(max_age_s=0.5)
    assert tr.update(_faces((0, 0), (300, 0)), 0.0) == [1, 2]
    # both move; listed in the other order
    assert tr.update(_faces((330, 10), (20, 5)), 0.1) == [2, 1]
    # fast motion: IoU ~0.2, landmarks still close in face-size units
    assert tr.update(_faces((60, 5), (330, 10)), 0.2) == [1, 2]
    assert tr.update(_faces((60, 5), (330, 10), (600, 300)), 0.3) == [1, 2, 3]
    # track 3 unseen for longer than max_age: a face there later is a new identity
    tr.update(_faces((60, 5)), 0.4)
    assert tr.update(_faces((600, 300)), 1.0) == [4]


def test_tracker_propagates_landmarks_with_optical_flow():
    import cv2

    from edgedf.runtime.detect import open_detector

    det = open_detector("retinaface", "ort")
    frames = face_frames(8, moving=True)
    tr = Tracker()
    gray = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]
    faces0 = det.detect(frames[0])
    tr.update(faces0, 0.0)
    tr.observe(gray[0], 1.0)
    for i in range(1, 8):
        moved, ids = tr.propagate(gray[i], 1.0, i / 30)
        assert ids == [1]
    truth = det.detect(frames[7])
    assert iou_matrix(moved.boxes, truth.boxes)[0, 0] > 0.7
    assert np.abs(moved.landmarks - truth.landmarks).mean() < 4.0
