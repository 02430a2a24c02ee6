"""The Python API for integrators (kiosk apps, camera pipelines): open a detector once, hand it a path or
frames, get the same per-face, per-track and per-video results as `edgedf run`. No torch.

    from edgedf import Detector

    det = Detector()                                  # the built-in bundle; Detector("bundles/x", backend=...)
    result = det.analyse("clip.mp4")                  # one source's section of the run report
    result = det.analyse_frames(frames, fps=25)       # numpy BGR frames from your own capture loop
    p = det.p_fake(crops)                             # aligned crops (det.spec) -> p(fake) per crop
    report = det.report([result])                     # a full report (docs/report-schema.md)

Bad input raises `edgedf.runtime.errors.EdgedfError` with a one-line message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import load_bundle
from .decode import FrameIterSource, Sampling
from .pipeline import DEFAULT_BUNDLE, Pipeline, RunOptions
from .report import build_report


class Detector:
    """A loaded detector: the bundle's classifier and the face detector, opened once and reused.

    `every` / `fps` / `frames` choose the analysed frames as on the command line (default 5 per second);
    other `RunOptions` fields (`min_face_px`, `threshold`, `batch`, `keep_frames`, ...) pass as keywords.
    """

    def __init__(
        self,
        bundle: str | Path | None = None,
        backend: str | None = None,
        detector: str = "retinaface",
        threads: int = 0,
        every: int | None = None,
        fps: float | None = None,
        frames: int | None = None,
        **options: Any,
    ):
        chosen = [(m, v) for m, v in (("every", every), ("fps", fps), ("frames", frames)) if v is not None]
        if len(chosen) > 1:
            raise ValueError("choose one of every, fps, frames")
        opts = RunOptions(sampling=Sampling(*chosen[0]) if chosen else Sampling(), **options)
        self.bundle = load_bundle(bundle if bundle is not None else DEFAULT_BUNDLE)
        self.pipeline = Pipeline(self.bundle, backend=backend, detector=detector, threads=threads, options=opts)

    @property
    def threshold(self) -> float:
        return self.pipeline.threshold

    @property
    def spec(self):
        """The preprocessing spec crops must follow (FaceCropSpec: alignment, size, colour, mean/std)."""
        return self.bundle.spec

    def analyse(
        self,
        source: str | Path,
        annotate: str | Path | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """A video, image, animated WebP/GIF, camera index or stream URL -> its report section
        (`video` verdict and score, `tracks`, `frames`, `warnings`, ...). `on_event` gets each track's
        verdict as it is first given or flips."""
        return self.pipeline.run_source(str(source), Path(annotate) if annotate else None, on_event=on_event)

    def analyse_frames(
        self,
        frames: Iterable[np.ndarray],
        fps: float | None = None,
        name: str = "frames",
        on_event: Callable[[dict[str, Any]], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Frames from your own capture (BGR uint8 [H, W, 3], any iterable, a generator included) ->
        the same section as `analyse`. `fps`: their rate (default 30) for timestamps and sampling;
        `stop()` true ends early (the section is then partial)."""
        return self.pipeline.run_source(FrameIterSource(frames, fps, name), on_event=on_event, stop=stop)

    def p_fake(self, crops: np.ndarray) -> np.ndarray:
        """p(fake) for face crops already aligned to `spec` (BGR uint8 [N, H, W, 3]), in batches."""
        crops = np.asarray(crops)
        return self.pipeline.p_fake(crops[None] if crops.ndim == 3 else crops)

    def report(self, sections: list[dict[str, Any]]) -> dict[str, Any]:
        """Sections -> a full report, as `edgedf run --json` writes it."""
        return build_report(self.pipeline.describe(), sections)
