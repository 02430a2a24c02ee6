"""Decoding: a SOURCE (video file, image, animated WebP/GIF, camera index, RTSP/HTTP URL) -> the frames a
sampling plan asks for, one at a time.

Only the frames needed are converted (`grab()` without `retrieve()` for skipped frames; long gaps in
`--frames K` mode are seeked over), frames are never buffered, so memory stays bounded for hour-long
videos and live streams. OpenCV applies a video's rotation metadata itself; the report records it.
"""

from __future__ import annotations

import math
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# FFmpeg's own log lines ("[h264 @ 0x...] Invalid NAL unit size") would go straight to stderr, unasked and
# unparseable; what matters reaches the user as the source's warnings instead. Read when OpenCV first
# opens a video, so setting it here (before any capture) is in time; a user's own setting wins.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

import cv2
import numpy as np

from .align import as_bgr8
from .errors import EdgedfError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jp2", ".pgm", ".ppm", ".pnm"}
VIDEO_EXTS = {".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp"}
ANIMATED_EXTS = {".gif", ".webp"}
MAX_IMAGE_PIXELS = 120_000_000  # refused above this (`edgedf run --max-pixels`): a 108 MP phone photo passes
DECODE_PIXELS = 16_000_000  # larger stills are decoded at 1/2, 1/4 or 1/8 scale (ImageSource)
MAX_VIDEO_PIXELS = 40_000_000  # 8K (33 MP) passes
SEEK_GAP = 300  # in --frames mode, seek rather than grab when the next wanted frame is this far ahead

try:  # decoder warnings about corrupt input must not spill onto the console: we say what is wrong ourselves
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:  # pragma: no cover - older OpenCV
    pass


@dataclass
class SourceInfo:
    source: str
    kind: str  # video | image | animation | camera | stream
    width: int = 0
    height: int = 0
    fps: float | None = None
    frame_count: int | None = None  # None: unknown (live)
    duration_s: float | None = None
    rotation: int = 0  # degrees, from the container's metadata (already applied to the frames)
    codec: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Sampling:
    """Which frames are analysed: every N-th, F per second, or K evenly spaced (all frames of an image)."""

    mode: str = "fps"  # every | fps | frames
    value: float = 5.0

    def __post_init__(self) -> None:
        if self.mode not in ("every", "fps", "frames"):
            raise EdgedfError(f"unknown sampling mode {self.mode!r}")
        finite = isinstance(self.value, (int, float)) and math.isfinite(self.value)
        if not finite or not self.value > 0 or (self.mode in ("every", "frames") and int(self.value) != self.value):
            raise EdgedfError(f"--{self.mode} needs a positive {'number' if self.mode == 'fps' else 'integer'}")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "value": self.value}


@dataclass
class Frame:
    index: int  # position in the source
    t: float  # seconds from the start
    image: np.ndarray  # uint8 BGR [H, W, 3]


def _fourcc(code: float) -> str | None:
    c = int(code)
    s = "".join(chr((c >> (8 * i)) & 0xFF) for i in range(4))
    return s.strip("\x00 ") if s.isprintable() and c else None


def _png_or_header_size(path: Path) -> tuple[int, int] | None:
    """Image size from the header, without decoding (Pillow is lazy), to refuse absurd images early."""
    try:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, with a clearer message
        with Image.open(path) as im:
            return im.size
    except Exception:
        pass
    try:  # PNG without Pillow
        with open(path, "rb") as f:
            head = f.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack(">II", head[16:24])
    except OSError:
        pass
    return None


class FrameSource:
    info: SourceInfo
    warnings: list[str]
    incomplete: bool = False  # the source ended before its declared length (truncated or corrupt)
    live: bool = False  # a camera or a stream without a declared length: it may run for days

    def frames(self, sampling: Sampling) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass


_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


class ImageSource(FrameSource):
    """A still image. One larger than DECODE_PIXELS is decoded at 1/2, 1/4 or 1/8 scale (JPEG scales
    in the decoder, so a 100 MP photo never exists at full size in memory); faces in such photos stay
    far above the size the detector and classifier work at."""

    def __init__(self, path: Path, max_pixels: float = MAX_IMAGE_PIXELS):
        self.path, self.warnings = path, []
        size = _png_or_header_size(path)
        if size and size[0] * size[1] > max_pixels:
            raise EdgedfError(
                f"{path}: image is {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.0f} MP), over the "
                f"{max_pixels / 1e6:.0f} MP limit (--max-pixels); downscale it first"
            )
        factor = 1
        if size and size[0] * size[1] > DECODE_PIXELS:
            factor = next((f for f in (2, 4) if size[0] * size[1] / f**2 <= DECODE_PIXELS), 8)
        if factor > 1:
            img = cv2.imread(str(path), _REDUCED[factor])  # honours EXIF orientation too
            self.warnings.append(
                f"{size[0]}x{size[1]} image decoded at 1/{factor} scale to bound memory; boxes are in its pixels"
            )
        else:
            img = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)  # honours EXIF orientation
        if img is None:
            raise EdgedfError(f"cannot decode {path}: not an image OpenCV can read, or corrupt")
        depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(img.dtype, 32)
        channels = 1 if img.ndim == 2 else img.shape[2]
        self.image = as_bgr8(img)
        h, w = self.image.shape[:2]
        self.info = SourceInfo(str(path), "image", w, h, None, 1, None, 0, f"{channels}ch/{depth}bit")

    def frames(self, sampling: Sampling) -> Iterator[Frame]:
        yield Frame(0, 0.0, self.image)


class AnimationSource(FrameSource):
    """Animated WebP/GIF through Pillow, one frame at a time."""

    def __init__(self, path: Path, im):
        self.path, self._im = path, im
        n = int(getattr(im, "n_frames", 1))
        self.warnings = []
        im.seek(0)
        im.load()  # WebP sets the frame duration only once a frame is loaded
        dur = im.info.get("duration") or 0
        fps = 1000.0 / dur if dur else None
        w, h = im.size
        if w * h > MAX_VIDEO_PIXELS:
            raise EdgedfError(f"{path}: animation is {w}x{h}, over the {MAX_VIDEO_PIXELS / 1e6:.0f} MP limit")
        self.info = SourceInfo(str(path), "animation", w, h, fps, n, n / fps if fps else None, 0, im.format)

    def frames(self, sampling: Sampling) -> Iterator[Frame]:
        n = self.info.frame_count or 1
        wanted = _wanted_indices(sampling, n, self.info.fps)
        t = 0.0
        next_fps_t = 0.0
        for i in range(n):
            try:
                self._im.seek(i)
            except EOFError:
                self.warnings.append(f"animation ended at frame {i} of {n}")
                self.incomplete = True
                return
            self._im.load()
            if wanted is not None:
                take = i in wanted
            elif sampling.mode == "every":
                take = i % int(sampling.value) == 0
            else:
                take = t + 1e-6 >= next_fps_t
                if take:
                    next_fps_t += 1.0 / sampling.value
            if take:
                rgb = np.asarray(self._im.convert("RGB"))
                yield Frame(i, t, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            t += (self._im.info.get("duration") or 0) / 1000.0

    def close(self) -> None:
        self._im.close()


class _Picker:
    """Which frames a sampling plan analyses, decided frame by frame from the index and timestamp."""

    def __init__(self, sampling: Sampling, n: int | None, fps: float | None):
        self.sampling, self.wanted = sampling, _wanted_indices(sampling, n, fps)
        self.every = int(sampling.value) if sampling.mode == "every" else 0
        # --frames K of a source of unknown length: the first K frames
        self.limit = int(sampling.value) if sampling.mode == "frames" and self.wanted is None else None
        self.next_t = 0.0

    def take(self, i: int, t: float) -> bool:
        if self.wanted is not None:
            return i in self.wanted
        if self.every:
            return i % self.every == 0
        if self.sampling.mode == "fps":
            if t + 1e-6 < self.next_t:
                return False
            step = 1.0 / self.sampling.value
            self.next_t = max(self.next_t + step, t - 0.5 * step)
            return True
        return True  # --frames K of a source of unknown length (self.limit stops it)


class FrameIterSource(FrameSource):
    """Frames handed over in memory (numpy BGR uint8, [H, W, 3]) by an integrator's own capture loop:
    any iterable, consumed once; `fps` gives their timestamps (default 30)."""

    def __init__(self, frames, fps: float | None = None, name: str = "frames", n: int | None = None):
        self._it, self.warnings = iter(frames), []
        n = len(frames) if n is None and hasattr(frames, "__len__") else n
        fps = float(fps) if fps else 30.0
        self.info = SourceInfo(name, "frames", 0, 0, fps, n, n / fps if n else None, 0, None)

    def frames(self, sampling: Sampling) -> Iterator[Frame]:
        pick, taken = _Picker(sampling, self.info.frame_count, self.info.fps), 0
        self.frames_read = 0
        for i, img in enumerate(self._it):
            self.frames_read = i + 1
            if pick.limit is not None and taken >= pick.limit:
                break
            t = i / self.info.fps
            if not pick.take(i, t):
                continue
            img = np.asarray(img)
            if img.ndim not in (2, 3) or img.size == 0 or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
                raise EdgedfError(f"frame {i}: expected a BGR image [H, W, 3], got shape {img.shape}")
            taken += 1
            yield Frame(i, t, as_bgr8(img))


def _wanted_indices(sampling: Sampling, n: int | None, fps: float | None) -> set[int] | None:
    """Frame indices to analyse when they can be known up front (None: decide by timestamp, fps mode)."""
    if sampling.mode == "frames":
        if not n:
            return None
        k = min(int(sampling.value), n)
        return {int(round(x)) for x in np.linspace(0, n - 1, k)}
    if sampling.mode == "every":
        return None if n is None else set(range(0, n, int(sampling.value)))
    return None


@dataclass
class StreamPolicy:
    """Network streams and cameras: how long a read may stall, and how a lost live stream is reopened."""

    timeout_s: float = 10.0  # opening, and each read: a stalled stream is noticed after this long
    reconnect: int = 5  # attempts per outage of a live stream (0: none), waiting 1, 2, 4, ... s (at most 30)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout_s) and 0 < self.timeout_s <= 3600):
            raise EdgedfError(f"--stream-timeout must lie in (0, 3600] s, got {self.timeout_s}")
        if self.reconnect < 0:
            raise EdgedfError(f"--reconnect must be >= 0, got {self.reconnect}")


def _capture(source: str, kind: str, timeout_s: float):
    if kind == "camera":
        return cv2.VideoCapture(int(source))
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(timeout_s * 1000)]
    if kind == "stream":
        params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(timeout_s * 1000)]
    return cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)


class VideoSource(FrameSource):
    """Video files, cameras and network streams through OpenCV (FFmpeg).

    A network stream that declares a length (a file served over HTTP) is read like a file: ending early
    makes it partial. A live one (no length: RTSP, live HTTP, a camera) that stops delivering frames is
    reopened with back-off; once the attempts are spent it ends, partial, with a warning saying when.
    """

    def __init__(self, source: str, kind: str, policy: StreamPolicy | None = None):
        self.source, self.warnings, self.kind = source, [], kind
        self.policy = policy or StreamPolicy()
        cap = _capture(source, kind, self.policy.timeout_s)
        if not cap.isOpened():
            cap.release()
            if kind == "camera":
                raise EdgedfError(f"cannot open camera {source}")
            if kind == "stream":
                raise EdgedfError(f"cannot open stream {source}: unreachable, refused or not a video stream")
            try:
                with open(source, "rb") as f:
                    is_mp4 = f.read(12)[4:8] == b"ftyp"
            except OSError:
                is_mp4 = False
            if is_mp4:
                raise EdgedfError(
                    f"cannot decode {source}: an MP4/MOV container without a readable video track "
                    "(zero-length, truncated or corrupt)"
                )
            raise EdgedfError(f"cannot decode {source}: not a video or image OpenCV can read, or corrupt")
        self.cap = cap
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if w * h > MAX_VIDEO_PIXELS:
            cap.release()
            raise EdgedfError(f"{source}: video is {w}x{h}, over the {MAX_VIDEO_PIXELS / 1e6:.0f} MP limit")
        fps = cap.get(cv2.CAP_PROP_FPS)
        fps = float(fps) if fps and math.isfinite(fps) and 0 < fps < 1000 else None
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if kind in ("video", "stream") else None
        if n is not None and n <= 0:
            n = None
        self.live = kind == "camera" or (kind == "stream" and n is None)
        rotation = int(cap.get(cv2.CAP_PROP_ORIENTATION_META) or 0) % 360
        if rotation in (90, 270):
            w, h = h, w  # OpenCV hands out frames already rotated
        codec = _fourcc(cap.get(cv2.CAP_PROP_FOURCC))
        duration = n / fps if (n is not None and fps) else None
        self.info = SourceInfo(source, kind, w, h, fps, n, duration, rotation, codec)

    def frames(self, sampling: Sampling) -> Iterator[Frame]:
        cap, info = self.cap, self.info
        n = info.frame_count
        wanted = _wanted_indices(sampling, n, info.fps)
        last_wanted = max(wanted) if wanted else None
        sorted_wanted = sorted(wanted) if wanted else []
        wi = 0
        live = self.live
        pick = _Picker(sampling, n, info.fps)
        t0 = time.monotonic()
        i = -1
        taken = 0
        while True:
            if last_wanted is not None and i >= last_wanted:
                break
            if pick.limit is not None and taken >= pick.limit:
                break
            if wanted is not None and info.kind == "video" and wi < len(sorted_wanted):
                target = sorted_wanted[wi]
                if target - i > SEEK_GAP:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, target)
                    i = target - 1
            if not cap.grab():
                if live and self._reopen(time.monotonic() - t0):
                    cap = self.cap
                    continue
                break
            i += 1
            if info.fps:
                t = i / info.fps if not live else time.monotonic() - t0
            else:
                t = (cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
            if not pick.take(i, t):
                continue
            if wanted is not None:
                wi += 1
            ok, img = cap.retrieve()
            if not ok or img is None:
                self.warnings.append(f"frame {i} could not be decoded")
                continue
            taken += 1
            yield Frame(i, float(t), as_bgr8(img))
        self.frames_read = i + 1
        if not live and n and i + 1 < (last_wanted + 1 if last_wanted is not None else n) - 1:
            what = "truncated or corrupt file?" if info.kind == "video" else f"stalled for {self.policy.timeout_s:g} s?"
            self.warnings.append(f"decoding stopped at frame {i + 1} of {n} declared: {what}")
            self.incomplete = True

    def _reopen(self, t: float) -> bool:
        """A live source stopped delivering (stalled past the read timeout, or dropped): reopen it with
        back-off. False when every attempt failed; the source is then partial, with a warning."""
        self.cap.release()
        waited = 0.0
        for k in range(self.policy.reconnect):
            delay = min(30.0, 2.0**k)
            time.sleep(delay)
            waited += delay
            cap = _capture(self.source, self.kind, self.policy.timeout_s)
            if cap.isOpened():
                self.cap = cap
                self.warnings.append(f"stream lost at t = {t:.1f} s; reconnected (attempt {k + 1})")
                return True
            cap.release()
        self.cap = _closed_capture()
        tried = f"{self.policy.reconnect} reconnect attempts over {waited:g} s failed" if self.policy.reconnect else (
            "no reconnect (--reconnect 0)")  # fmt: skip
        self.warnings.append(f"stream stalled or ended at t = {t:.1f} s; {tried}")
        self.incomplete = True
        return False

    def close(self) -> None:
        self.cap.release()


def _closed_capture():
    return cv2.VideoCapture()  # not opened: grab() is False, release() is safe


def classify_source(source: str) -> str:
    """camera | stream | dir | file (by what the string is, before opening anything)."""
    if source.isdigit():
        return "camera"
    if "://" in source:
        return "stream"
    p = Path(source)
    if p.is_dir():
        return "dir"
    return "file"


def expand_sources(sources: list[str]) -> list[str]:
    """Directories -> the media files in them (recursively, sorted); other sources as given.

    A directory without media stays in the list as itself, and a media name that is not a regular file
    (a FIFO, a socket) is listed too: each then fails as its own source (reported, the others still
    run) rather than aborting the run or vanishing silently.
    """
    out: list[str] = []
    for s in sources:
        if classify_source(s) == "dir":
            files = sorted(
                str(p)
                for p in Path(s).rglob("*")
                if not p.is_dir() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS
            )
            out.extend(files or [s])
        else:
            out.append(s)
    return out


def check_source(source: str) -> str | None:
    """Why a file source cannot be read, found without opening it (None: worth a try; cameras and streams
    are only known by opening them). Run before any model is loaded, so a typo costs nothing."""
    if classify_source(source) in ("camera", "stream"):
        return None
    path = Path(source)
    if not path.exists():
        return f"file not found: {source}"
    if path.is_dir():
        return f"directory {source} holds no images or videos"
    if not path.is_file():
        return f"not a regular file (a FIFO, socket or device): {source}"
    if not os.access(path, os.R_OK):
        return f"permission denied: {source}"
    if os.path.getsize(path) == 0:
        return f"{source} is empty (0 bytes)"
    return None


def open_source(source: str, stream: StreamPolicy | None = None, max_pixels: float = MAX_IMAGE_PIXELS) -> FrameSource:
    kind = classify_source(source)
    if kind in ("camera", "stream"):
        return VideoSource(source, kind, stream)
    if (problem := check_source(source)) is not None:
        raise EdgedfError(problem)
    path = Path(source)
    ext = path.suffix.lower()
    if ext in ANIMATED_EXTS:
        try:
            from PIL import Image

            im = Image.open(path)
            if getattr(im, "n_frames", 1) > 1:
                return AnimationSource(path, im)
            im.close()
        except ImportError:
            pass
        except Exception as e:
            raise EdgedfError(f"cannot decode {source}: {str(e).splitlines()[0]}") from None
    if ext in IMAGE_EXTS:
        return ImageSource(path, max_pixels)
    if ext not in VIDEO_EXTS:  # FFmpeg would happily "play" a .txt file (its tty demuxer): be strict
        raise EdgedfError(
            f"cannot decode {source}: not a video or image (unknown file type {ext or 'without extension'})"
        )
    src = VideoSource(str(path), "video")
    if src.info.frame_count == 0:
        src.close()
        raise EdgedfError(f"{source} has no video frames (zero-length video)")
    return src


def read_source_list(path: str | Path) -> list[str]:
    """`--from-list FILE`: one path or URL a line ('-': stdin); blank lines and # comments skipped."""
    import sys

    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EdgedfError(f"--from-list: cannot read {path}: {e.strerror if isinstance(e, OSError) else e}") from None
    out = [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]
    if not out:
        raise EdgedfError(f"--from-list: {path} lists no source")
    return out
