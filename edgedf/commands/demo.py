"""`edgedf demo [PATH]`: the whole pipeline on the built-in bundle, in one command.

Without PATH it builds two short clips from a real face that ships in a registry package (scikit-image's
astronaut, NASA, public domain): `real.mp4`, the face moving and zooming, and `self_blended.mp4`, the
same frames with the face self-blended (edgedf's SBI pseudo-fake, a stand-in for a face swap's blending
boundary). Then it runs `edgedf run` on them and writes the JSON report, the annotated videos and the
timeline plot into one folder it names.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import typer

from edgedf.runtime.errors import EdgedfError


def demo_face() -> np.ndarray:
    try:
        from skimage import data
    except ImportError:
        raise EdgedfError("demo clips need scikit-image (pip install 'edgedf[demo]') or a video path") from None
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[0:300, 100:380]  # head and shoulders


def self_blended(face: np.ndarray, seed: int = 3) -> np.ndarray:
    from edgedf.runtime.detect import open_detector
    from edgedf.train.sbi import self_blend  # numpy + OpenCV only

    faces = open_detector().detect(face)
    if not len(faces):
        raise EdgedfError("the demo face was not detected")
    rng = np.random.default_rng(seed)
    blended, _ = self_blend(face, faces.landmarks[int(np.argmax(faces.scores))], rng, ratios=(1.0,))
    return blended


def write_clip(path: Path, face: np.ndarray, seconds: float = 3.0, fps: int = 15, size=(640, 360)) -> Path:
    """The face sliding and zooming over a grey background (mp4v: the OpenCV wheel has no H.264)."""
    w, h = size
    n = int(seconds * fps)
    tmp = path.with_name(f".{path.name}.partial.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise EdgedfError(f"cannot write {path}")
    for i in range(n):
        k = i / max(n - 1, 1)
        frame = np.full((h, w, 3), 90, np.uint8)
        s = 0.8 * h / face.shape[0] * (1.0 + 0.15 * k)
        crop = cv2.resize(face, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        x0, y0 = int(0.1 * w + k * (0.8 * w - crop.shape[1])), max(0, (h - crop.shape[0]) // 2)
        crop = crop[: h - y0, : w - x0]
        frame[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        writer.write(frame)
    writer.release()
    tmp.replace(path)
    return path


def register(app: typer.Typer) -> None:
    from typer.main import get_command

    from edgedf.cli import cli_errors, console

    @app.command("demo")
    @cli_errors
    def demo(
        path: Path | None = typer.Argument(None, help="A video or image to analyse instead of the built-in clips."),
        out: Path = typer.Option(Path("edgedf-demo"), "--out", "-o", help="Folder for clips, report, video, plot."),
        bundle: Path | None = typer.Option(None, "--bundle", "-b", help="Bundle (default: the built-in one)."),
        backend: str | None = typer.Option(None, "--backend", help="ort | openvino | tensorrt"),
    ) -> None:
        """Run the whole pipeline on demo clips (or PATH) with the built-in bundle and write its outputs."""
        out.mkdir(parents=True, exist_ok=True)
        if path is not None:
            if not path.exists():
                raise EdgedfError(f"not found: {path}")
            sources = [str(path)]
        else:
            face = demo_face()
            sources = [
                str(write_clip(out / "real.mp4", face)),
                str(write_clip(out / "self_blended.mp4", self_blended(face))),
            ]
            console.print(
                f"made {sources[0]} (a real face) and {sources[1]} (the same face self-blended)", highlight=False
            )
        args = [
            "run",
            *sources,
            "--json",
            str(out / "report.json"),
            "--annotate",
            str(out / "annotated.mp4"),
            "--plot",
            str(out / "timeline.png"),
        ]
        if bundle is not None:
            args += ["--bundle", str(bundle)]
        if backend is not None:
            args += ["--backend", backend]
        code = get_command(app).main(args=args, standalone_mode=False)
        console.print(f"wrote {out}/: report.json, annotated*.mp4, timeline.png", highlight=False)
        if code:
            raise typer.Exit(code)
