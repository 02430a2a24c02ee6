"""The video pipeline: decode -> detect -> track -> align+crop -> classify -> aggregate, per source.

Each stage is its own module (decode, detect, track, align, backends, aggregate); this one wires them,
times them, and batches classifier calls across frames. `Pipeline.run_source` returns one source's
section of the report (see docs/report-schema.md); bad input raises EdgedfError.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .aggregate import Aggregator, VerdictPolicy, judgeable_face
from .align import align_faces
from .backends import BackendOptions, open_classifier
from .bundle import Bundle
from .decode import MAX_IMAGE_PIXELS, FrameSource, Sampling, StreamPolicy, open_source
from .detect import Detector, Faces, open_detector
from .errors import EdgedfError
from .track import Tracker

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "assets" / "default_bundle"  # shipped in the package
LIVE_FRAMES_KEPT = 1000  # a camera or stream's report keeps its latest analysed frames, not days of them
STAGES = ("decode", "detect", "track", "align", "classify", "aggregate", "annotate")


@dataclass
class RunOptions:
    sampling: Sampling = field(default_factory=Sampling)
    detect_every: int = 0  # run the detector on every k-th analysed frame; 0: auto (about every 0.1 s)
    batch: int = 8  # crops per classifier call (16 costs ~40 MB more activation memory for no speed here)
    threshold: float | None = None  # None: the bundle's
    track: bool = True  # False: detector on every analysed frame, track ids by matching only
    max_faces: int = 16  # per frame, largest first
    keep_frames: bool = True  # per-frame records in the report
    min_face_px: float | None = None  # None: the bundle's verdict policy (aggregate.py)
    stream: StreamPolicy = field(default_factory=StreamPolicy)  # read timeout and reconnects of live sources
    max_image_pixels: float = MAX_IMAGE_PIXELS  # larger stills are refused (decode.py)


class StageTimer:
    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - t0
        return now


def _detect_every(opts: RunOptions, fps: float | None) -> int:
    if opts.detect_every > 0 or not opts.track:
        return max(1, opts.detect_every) if opts.track else 1
    if opts.sampling.mode == "every" and fps:
        gap = opts.sampling.value / fps
    elif opts.sampling.mode == "fps":
        gap = 1.0 / opts.sampling.value
    else:
        return 1  # --frames K: frames far apart, detect on each
    return int(min(5, max(1, round(0.1 / gap))))


def _track_max_age(opts: RunOptions, info) -> float:
    """How long a track survives unseen: 1 s, or 2.5 analysed-frame gaps when frames lie further apart
    (`--frames K` over a long video, `--fps 0.2`), so a face seen in consecutive analysed frames stays one
    track and can gather the crops a verdict needs."""
    gap = 0.0
    if opts.sampling.mode == "fps":
        gap = 1.0 / opts.sampling.value
    elif opts.sampling.mode == "every" and info.fps:
        gap = opts.sampling.value / info.fps
    elif opts.sampling.mode == "frames" and info.duration_s:
        gap = info.duration_s / max(opts.sampling.value - 1, 1)
    return max(1.0, 2.5 * gap)


def decision_rules(bundle: Bundle, opts: RunOptions) -> tuple[float, VerdictPolicy]:
    """The threshold and verdict policy a run uses: the bundle's, unless the options override them."""
    threshold = bundle.threshold if opts.threshold is None else float(opts.threshold)
    policy = bundle.verdict_policy
    if opts.min_face_px is not None:
        policy = VerdictPolicy(float(opts.min_face_px), policy.min_track_crops)
    return threshold, policy


class Pipeline:
    def __init__(
        self,
        bundle: Bundle,
        backend: str | None = None,
        detector: str = "retinaface",
        threads: int = 0,
        options: RunOptions | None = None,
    ):
        self.bundle = bundle
        self.options = options or RunOptions()
        self.backend = backend or bundle.backend
        self.threads = threads
        self.classifier = open_classifier(bundle, self.backend, BackendOptions(threads=threads))
        det_backend = self.backend if detector.split(":")[0] in ("retinaface", "insightface") else "ort"
        self.detector: Detector = open_detector(detector, det_backend, BackendOptions(threads=threads))
        self.threshold, self.policy = decision_rules(bundle, self.options)

    def describe(self) -> dict[str, Any]:
        m = self.bundle.manifest
        return {
            "model": {
                "bundle": str(self.bundle.path),
                "model": m.get("model"),
                "target": m.get("target"),
                "precision": m.get("precision"),
                "entry": m.get("entry"),
                "entry_sha256": m["files"][m["entry"]]["sha256"],
                "labels": self.bundle.labels,
                "threshold": self.threshold,
                "verdict_policy": self.policy.to_dict(),
                "input_size": self.bundle.spec.input_size,
                "preprocessing": self.bundle.spec.to_dict(),
                "notes": self.bundle.notes,
            },
            "backend": {"name": self.backend, "threads": self.threads, "version": _backend_version(self.backend)},
            "detector": self.detector.describe(),
            "options": {
                "sampling": self.options.sampling.to_dict(),
                "detect_every": self.options.detect_every,
                "batch": self.options.batch,
                "tracking": self.options.track,
            },
        }

    def p_fake(self, crops: np.ndarray) -> np.ndarray:
        """p(fake) for aligned BGR crops [N, H, W, 3], `options.batch` crops per classifier call."""
        b = max(1, self.options.batch)
        spec = self.bundle.spec
        return np.concatenate(
            [self.classifier.p_fake(spec.to_input(crops[i : i + b], "BGR")) for i in range(0, len(crops), b)]
        ) if len(crops) else np.zeros((0,), np.float32)  # fmt: skip

    def _classify(self, pending: list[tuple[dict, np.ndarray]], timer: StageTimer) -> None:
        if not pending:
            return
        t0 = time.perf_counter()
        p = self.p_fake(np.stack([c for _, c in pending]))
        for (face, _), v in zip(pending, p, strict=True):
            face["p_fake"] = float(v)
        pending.clear()
        timer.add("classify", t0)

    def run_source(
        self,
        source: str | FrameSource,
        annotate: Path | None = None,
        progress: Callable[[int, int | None], None] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """One source's report section. `on_event` gets a verdict event whenever a track's verdict is
        first given or flips (live streams: written as they happen); `stop()` true ends the source early,
        judged on what was analysed (status partial)."""
        opts = self.options
        timer = StageTimer()
        t_start = time.perf_counter()
        if isinstance(source, FrameSource):  # frames an integrator hands over (runtime/api.py)
            src, source = source, source.info.source
        else:
            src = open_source(source, opts.stream, opts.max_image_pixels)
        timer.add("decode", t_start)
        info = src.info
        k_detect = _detect_every(opts, info.fps)
        tracker = Tracker(max_age_s=_track_max_age(opts, info))
        spec = self.bundle.spec
        # per-frame records for the report (keep_frames); a live source keeps only the latest ones
        frames: list[dict[str, Any]] | deque = deque(maxlen=LIVE_FRAMES_KEPT) if src.live else []
        agg = Aggregator(self.threshold, self.policy)
        held: list[dict[str, Any]] = []  # analysed frames whose faces wait for the classifier
        pending: list[tuple[dict, np.ndarray]] = []

        def settle() -> None:  # classified frames -> the running aggregate (and the report's frame list)
            for rec in held:
                for tr in agg.add(rec):
                    if on_event is not None:
                        on_event({"event": "verdict", "source": source, "t": rec["t"], "frame": rec["index"],
                                  "track": tr["id"], "verdict": tr["verdict"], "p_fake_mean": tr["p_fake_mean"],
                                  "n_judged": tr["n_judged"]})  # fmt: skip
                if opts.keep_frames:
                    frames.append(rec)
            held.clear()

        stopped = False
        annotate_problem = None
        writer = None
        n_analysed = n_detected = 0
        max_side = getattr(self.detector, "max_side", 640) or 640
        try:
            it = src.frames(opts.sampling)
            t0 = time.perf_counter()
            for frame in it:
                t0 = timer.add("decode", t0)
                img = frame.image
                if info.width == 0 or n_analysed == 0:
                    info.height, info.width = img.shape[:2]
                run_det = (not opts.track) or n_analysed % k_detect == 0
                if opts.track:
                    scale = min(1.0, max_side / max(img.shape[:2]))
                    gray = cv2.cvtColor(
                        cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else img,
                        cv2.COLOR_BGR2GRAY,
                    )
                    t0 = timer.add("track", t0)
                if run_det:
                    faces = self.detector.detect(img)
                    if len(faces) > opts.max_faces:
                        area = (faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])
                        faces = faces.take(np.argsort(-area)[: opts.max_faces])
                    n_detected += 1
                    t0 = timer.add("detect", t0)
                    if opts.track:
                        ids = tracker.update(faces, frame.t)
                        tracker.observe(gray, scale)
                    else:
                        ids = tracker.update(faces, frame.t)
                    t0 = timer.add("track", t0)
                else:
                    faces, ids = tracker.propagate(gray, scale, frame.t)
                    t0 = timer.add("track", t0)
                record = {"index": frame.index, "t": round(frame.t, 4), "detected": bool(run_det), "faces": []}
                if len(faces):
                    crops = align_faces(img, faces.landmarks, spec, faces.boxes)
                    t0 = timer.add("align", t0)
                    for j in range(len(faces)):
                        box = [round(float(v), 1) for v in faces.boxes[j]]
                        judged = judgeable_face(box, self.policy)
                        face = {
                            "track": int(ids[j]),
                            "box": box,
                            "det_score": round(float(faces.scores[j]), 4) if run_det else None,
                            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in faces.landmarks[j]],
                            "p_fake": None,
                            "judged": judged,
                        }
                        record["faces"].append(face)
                        if judged:  # too small to judge: reported, never classified
                            pending.append((face, crops[j]))
                    if len(pending) >= opts.batch or annotate is not None or not opts.track:
                        self._classify(pending, timer)
                    t0 = time.perf_counter()
                held.append(record)
                if not pending:
                    settle()
                n_analysed += 1
                if annotate is not None:
                    t0 = time.perf_counter()
                    if writer is None:
                        try:
                            writer = _AnnotationWriter(annotate, img.shape[1], img.shape[0], _annotate_fps(info, opts))
                        except EdgedfError as e:  # the analysis goes on; only the video is missing
                            annotate_problem = str(e)
                            annotate = None
                    if writer is not None:
                        writer.write(img, faces, record, self.threshold)
                    t0 = timer.add("annotate", t0)
                if progress is not None:
                    progress(frame.index + 1, info.frame_count)
                if stop is not None and stop():
                    stopped = True
                    break
                t0 = time.perf_counter()
            self._classify(pending, timer)
            settle()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            src.close()
        if n_analysed == 0:
            if writer is not None:
                writer.abort()
            raise EdgedfError(f"no frame could be decoded from {source} (truncated or corrupt?)")
        t0 = time.perf_counter()
        tracks, video = agg.result()
        timer.add("aggregate", t0)
        warnings = list(src.warnings)
        if annotate_problem:
            warnings.append(f"no annotated video: {annotate_problem}")
        if stopped:
            warnings.append(f"stopped on request after {n_analysed} analysed frames (t = {record['t']:.1f} s)")
        if writer is not None:
            t0 = time.perf_counter()
            writer.close()
            timer.add("annotate", t0)
        wall = time.perf_counter() - t_start
        timings = {k: round(v, 4) for k, v in timer.seconds.items()}
        timings["total"] = round(wall, 4)
        frames_read = getattr(src, "frames_read", info.frame_count or n_analysed)
        media_s = info.duration_s if info.kind == "video" and info.duration_s else None
        if media_s and frames_read and info.frame_count and frames_read < info.frame_count and info.fps:
            media_s = frames_read / info.fps
        return {
            "source": source,
            "status": "partial" if src.incomplete or stopped else "ok",  # judged on what could be read
            "error": None,
            "info": info.to_dict(),
            "sampling": {
                **opts.sampling.to_dict(),
                "detect_every": k_detect,
                "tracking": opts.track,
                "frames_read": frames_read,
                "frames_analysed": n_analysed,
                "frames_detected": n_detected,
            },
            "video": video,
            "tracks": tracks,
            "frames": list(frames) if opts.keep_frames else [],
            "timings_s": timings,
            "speed": {
                "analysed_fps": round(n_analysed / wall, 3) if wall > 0 else None,
                "realtime_factor": round(media_s / wall, 3) if media_s and wall > 0 else None,
            },
            "warnings": warnings,
            "annotated": str(annotate) if annotate is not None else None,
        }


def _annotate_fps(info, opts: RunOptions) -> float:
    fps = info.fps or 25.0
    if opts.sampling.mode == "every":
        return max(1.0, fps / opts.sampling.value)
    if opts.sampling.mode == "fps":
        return max(1.0, min(fps, opts.sampling.value))
    return 2.0


class _AnnotationWriter:
    """Writes the analysed frames with boxes, track ids and p(fake) to an mp4 (mp4v), atomically."""

    def __init__(self, path: Path, width: int, height: int, fps: float):
        import os
        import tempfile

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".mp4", dir=path.parent)
        os.close(fd)
        # MPEG-4 part 2 wants even sides within limits: tiny and huge frames are scaled to 16..4096 px
        k = max(min(1.0, 4096 / max(width, height)), 16 / min(width, height))
        width, height = (max(16, int(round(v * k))) // 2 * 2 for v in (width, height))
        self.path, self.tmp, self.size = path, Path(tmp), (width, height)
        self.vw = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not self.vw.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise EdgedfError(f"cannot write {path}: OpenCV's mp4v encoder refused {width}x{height} here")

    def write(self, img: np.ndarray, faces: Faces, record: dict, threshold: float) -> None:
        out = img.copy() if (img.shape[1], img.shape[0]) == self.size else cv2.resize(img, self.size)
        sx, sy = self.size[0] / img.shape[1], self.size[1] / img.shape[0]  # source px -> video px
        thick = max(1, round(max(self.size) / 500))
        for face in record["faces"]:
            b = face["box"]
            x1, y1, x2, y2 = (int(round(v)) for v in (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy))
            p = face["p_fake"]
            colour = (128, 128, 128) if p is None else ((0, 0, 255) if p >= threshold else (0, 200, 0))
            cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
            label = f"#{face['track']} " + ("?" if p is None else f"{p:.2f}")
            cv2.putText(out, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, colour, thick)
            for x, y in face["landmarks"]:
                cv2.circle(out, (int(x * sx), int(y * sy)), thick, (255, 255, 0), -1)
        self.vw.write(out)

    def close(self) -> None:
        import os

        self.vw.release()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.vw.release()
        self.tmp.unlink(missing_ok=True)


def _backend_version(name: str) -> str | None:
    try:
        if name == "ort":
            import onnxruntime

            return onnxruntime.__version__
        if name == "openvino":
            import openvino

            return openvino.__version__
        if name == "tensorrt":
            import tensorrt

            return tensorrt.__version__
    except Exception:
        return None
    return None


def error_section(source: str, message: str) -> dict[str, Any]:
    """The report section of a source that could not be judged."""
    return {
        "source": source,
        "status": "error",
        "error": message,
        "info": None,
        "sampling": None,
        "video": {"verdict": "error"},
        "tracks": [],
        "frames": [],
        "timings_s": None,
        "speed": None,
        "warnings": [],
        "annotated": None,
    }
