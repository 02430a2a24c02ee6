import struct
import zlib

import cv2
import numpy as np
import pytest
from runtime_media import face_frames

from edgedf.runtime.decode import Sampling, expand_sources, open_source
from edgedf.runtime.errors import EdgedfError


def _indices(src, sampling):
    return [f.index for f in src.frames(sampling)]


def test_video_info_and_sampling_modes(face_video):
    src = open_source(str(face_video))
    assert (src.info.kind, src.info.width, src.info.height, src.info.frame_count) == ("video", 640, 360, 60)
    assert src.info.fps == pytest.approx(30) and src.info.duration_s == pytest.approx(2.0)
    assert _indices(src, Sampling("every", 7)) == list(range(0, 60, 7))
    src = open_source(str(face_video))
    assert _indices(src, Sampling("fps", 5)) == list(range(0, 60, 6))
    src = open_source(str(face_video))
    assert _indices(src, Sampling("frames", 4)) == [0, 20, 39, 59]
    src = open_source(str(face_video))
    frames = list(src.frames(Sampling("every", 30)))
    assert frames[1].t == pytest.approx(1.0) and frames[1].image.shape == (360, 640, 3)


def test_bad_sampling_values():
    with pytest.raises(EdgedfError):
        Sampling("every", 0)
    with pytest.raises(EdgedfError):
        Sampling("frames", 2.5)


def test_gray_and_16bit_images(tmp_path):
    face = cv2.cvtColor(face_frames(1)[0], cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "g.png"), face)
    cv2.imwrite(str(tmp_path / "g16.png"), face.astype(np.uint16) * 257)
    for name, codec in (("g.png", "1ch/8bit"), ("g16.png", "1ch/16bit")):
        src = open_source(str(tmp_path / name))
        (frame,) = list(src.frames(Sampling()))
        assert frame.image.dtype == np.uint8 and frame.image.shape == (360, 640, 3)
        assert src.info.codec == codec
        np.testing.assert_allclose(frame.image[..., 1].astype(int), face.astype(int), atol=1)


def _png_header_only(path, w, h):
    """A PNG that claims w x h pixels (the IDAT is a token): only the header is ever read."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )


def test_very_large_image_is_refused_before_decoding(tmp_path):
    big = tmp_path / "huge.png"
    _png_header_only(big, 40000, 30000)
    with pytest.raises(EdgedfError, match="over the 120 MP limit"):
        open_source(str(big))


def test_pixel_limit_is_an_option(tmp_path):
    big = tmp_path / "big.png"
    _png_header_only(big, 8000, 6000)  # 48 MP: under the default limit
    with pytest.raises(EdgedfError, match="over the 20 MP limit"):
        open_source(str(big), max_pixels=20e6)


def test_huge_jpeg_is_decoded_reduced(tmp_path):
    """A 12000x9000 (108 MP) photo is decoded at 1/4 scale inside the JPEG decoder, so its full-size
    frame (324 MB) never exists; the face in it is still found and judged at its reduced size."""
    img = cv2.resize(face_frames(1)[0], (12000, 9000), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(tmp_path / "huge.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 70])
    del img
    src = open_source(str(tmp_path / "huge.jpg"))
    (frame,) = list(src.frames(Sampling()))
    assert frame.image.shape == (2250, 3000, 3) and (src.info.width, src.info.height) == (3000, 2250)
    assert src.warnings == ["12000x9000 image decoded at 1/4 scale to bound memory; boxes are in its pixels"]


def test_large_image_is_analysed(tmp_path):
    img = cv2.resize(face_frames(1)[0], (3840, 2160))
    cv2.imwrite(str(tmp_path / "4k.jpg"), img)
    src = open_source(str(tmp_path / "4k.jpg"))
    assert (src.info.width, src.info.height) == (3840, 2160)


def test_animated_webp_and_gif(tmp_path):
    from PIL import Image

    frames = [Image.fromarray(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)) for f in face_frames(6, size=(160, 90))]
    for ext in ("webp", "gif"):
        p = tmp_path / f"anim.{ext}"
        frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
        src = open_source(str(p))
        assert src.info.kind == "animation" and src.info.frame_count == 6 and src.info.fps == pytest.approx(10)
        got = list(src.frames(Sampling("every", 2)))
        assert [f.index for f in got] == [0, 2, 4]
        assert got[1].t == pytest.approx(0.2) and got[1].image.shape == (90, 160, 3)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.mp4", None, "file not found"),
        ("empty.mp4", b"", "empty"),
        ("notes.mp4", b"just text\n" * 50, "cannot decode"),
        ("notes.txt", b"just text\n" * 50, "not a video or image"),
        ("bad.jpg", b"\xff\xd8\xff" + b"\0" * 100, "cannot decode"),
    ],
)
def test_bad_files(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(EdgedfError, match=message):
        open_source(str(tmp_path / name))


def make_zero_length_mp4(path):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        c.start_encoding()  # header written, no frame
    return path


def test_zero_length_video(tmp_path):
    p = make_zero_length_mp4(tmp_path / "zero.mp4")
    with pytest.raises(EdgedfError, match="zero-length"):
        open_source(str(p))


def test_truncated_video_warns_or_fails(face_video, tmp_path):
    data = face_video.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # moov at the end (no faststart): the index is gone
    with pytest.raises(EdgedfError, match="truncated"):
        open_source(str(cut))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(data[:64] + bytes(len(data) - 64))
    with pytest.raises(EdgedfError, match="cannot decode|no video frames"):
        open_source(str(corrupt))


def test_unreachable_stream():
    with pytest.raises(EdgedfError, match="cannot open stream"):
        open_source("rtsp://127.0.0.1:9/none")
    with pytest.raises(EdgedfError, match="cannot open stream"):
        open_source("http://127.0.0.1:9/none.mp4")


def test_directory_expansion(tmp_path, face_video):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.mp4").write_bytes(face_video.read_bytes())
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "readme.txt").write_text("not media")
    assert expand_sources([str(tmp_path)]) == [str(tmp_path / "a.jpg"), str(tmp_path / "sub" / "b.mp4")]
    (tmp_path / "empty").mkdir()
    assert expand_sources([str(tmp_path / "empty")]) == [str(tmp_path / "empty")]  # stays, to fail on its own
    with pytest.raises(EdgedfError, match="no images or videos"):
        open_source(str(tmp_path / "empty"))
