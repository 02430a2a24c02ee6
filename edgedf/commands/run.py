"""`edgedf run SOURCE...`: video/image/stream in, per-face, per-track and per-video verdicts out.

No torch here: this is what a device runs.
"""

from __future__ import annotations

from pathlib import Path

import typer


def annotate_path(out: Path, index: int, source: str, n_sources: int) -> Path:
    """--annotate OUT with several sources: OUT_<n>_<source stem>.mp4 beside OUT."""
    if n_sources == 1:
        return out
    stem = Path(source).stem if "://" not in source else "stream"
    return out.with_name(f"{out.stem}_{index:03d}_{stem}{out.suffix or '.mp4'}")


def register(app: typer.Typer) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgedf.cli import DEBUG, cli_errors, console, err_console, one_line
    from edgedf.runtime.errors import EdgedfError

    @app.command("run")
    @cli_errors
    def run(
        sources: list[str] = typer.Argument(
            ..., help="Video files, images, directories of them, animated WebP/GIF, a camera index or an RTSP/HTTP URL."
        ),
        bundle: Path | None = typer.Option(
            None, "--bundle", "-b", help="Bundle directory (default: the built-in one)."
        ),
        backend: str | None = typer.Option(
            None, "--backend", help="ort | openvino | tensorrt (default: the bundle's)."
        ),
        detector: str = typer.Option("retinaface", "--detector", help="retinaface | insightface:PATH | yunet:PATH"),
        every: int | None = typer.Option(None, "--every", help="Analyse every N-th frame."),
        fps: float | None = typer.Option(None, "--fps", help="Analyse F frames per second of video (default 5)."),
        frames: int | None = typer.Option(None, "--frames", help="Analyse K evenly spaced frames."),
        detect_every: int = typer.Option(
            0, "--detect-every", help="Detector on every k-th analysed frame, tracking in between (0: auto)."
        ),
        threshold: float | None = typer.Option(None, "--threshold", help="Decision threshold (default: the bundle's)."),
        min_face: float | None = typer.Option(
            None, "--min-face", help="Faces smaller than this (px, shorter box side) are reported, not judged."
        ),
        json_out: Path | None = typer.Option(None, "--json", help="Write the JSON report here."),
        annotate: Path | None = typer.Option(None, "--annotate", help="Write an annotated video (mp4) here."),
        plot: Path | None = typer.Option(None, "--plot", help="Write a PNG timeline of p(fake) per track here."),
        threads: int = typer.Option(0, "--threads", help="Threads per backend session (0: backend default)."),
        batch: int = typer.Option(8, "--batch", help="Face crops per classifier call."),
        no_frames: bool = typer.Option(False, "--no-frames", help="Leave per-frame records out of the report."),
    ) -> None:
        """Detect, track, align and classify faces; print verdicts, optionally write report, video, plot."""
        from edgedf.runtime.bundle import load_bundle
        from edgedf.runtime.decode import Sampling, expand_sources
        from edgedf.runtime.pipeline import Pipeline, RunOptions, error_section
        from edgedf.runtime.report import build_report, exit_code, plot_timeline, write_report

        chosen = [(m, v) for m, v in (("every", every), ("fps", fps), ("frames", frames)) if v is not None]
        if len(chosen) > 1:
            raise EdgedfError("choose one of --every, --fps, --frames")
        sampling = Sampling(*chosen[0]) if chosen else Sampling()
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise EdgedfError(f"--threshold must lie in [0, 1], got {threshold}")
        if batch < 1:
            raise EdgedfError("--batch must be at least 1")
        if min_face is not None and not 0.0 <= min_face < 1e5:
            raise EdgedfError(f"--min-face must be a size in pixels >= 0, got {min_face}")
        from edgedf.runtime.fsutil import check_output_file

        # outputs checked before any analysis: a bad path must not cost a finished run
        json_out = check_output_file(json_out, "--json") if json_out is not None else None
        plot = check_output_file(plot, "--plot") if plot is not None else None
        annotate = check_output_file(annotate, "--annotate") if annotate is not None else None
        bundle_path = bundle if bundle is not None else default_bundle_path()
        b = load_bundle(bundle_path)
        opts = RunOptions(
            sampling=sampling, detect_every=detect_every, batch=batch, threshold=threshold,
            keep_frames=not no_frames, min_face_px=min_face,
        )  # fmt: skip
        if plot is not None:
            opts.keep_frames = True  # the plot reads the per-frame records
        pipe = Pipeline(b, backend=backend, detector=detector, threads=threads, options=opts)
        paths = expand_sources(sources)
        results = []
        for i, src in enumerate(paths):
            try:
                ann = annotate_path(annotate, i, src, len(paths)) if annotate is not None else None
                results.append(_run_one(pipe, src, ann, err_console))
                for w in results[-1]["warnings"]:  # on the console too, not only in the JSON
                    err_console.print(f"[yellow]warning:[/yellow] {escape(src)}: {escape(w)}", highlight=False)
            except EdgedfError as e:
                err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
                results.append(error_section(src, str(e)))
            except Exception as e:  # a backend failure or a bug on this source: the others still run
                if DEBUG["on"]:
                    raise
                line = f"analysis failed: {one_line(e)} (edgedf --debug run ... for the traceback)"
                err_console.print(f"[red]{escape(src)}: {escape(line)}[/red]", highlight=False, soft_wrap=True)
                results.append(error_section(src, line))
        if plot is not None and any(r["status"] != "error" for r in results):
            plot_timeline(plot, results, pipe.threshold)
        if no_frames:
            for r in results:
                r["frames"] = []
        report = build_report(pipe.describe(), results)
        if json_out is not None:
            write_report(json_out, report)
        if any(r["status"] != "error" for r in results):
            console.print(_summary_table(results, pipe, Table))
            notes = b.notes
            if notes and bundle is None:
                console.print(f"[yellow]note:[/yellow] {escape(notes)}", highlight=False)
        code = exit_code(results)
        if code:
            raise typer.Exit(code)

    def _run_one(pipe, src, ann, err_console):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        if not err_console.is_terminal:
            return pipe.run_source(src, annotate=ann)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=err_console, transient=True
        ) as prog:
            task = prog.add_task(escape(Path(src).name if "://" not in src else src), total=None)

            def update(done: int, total: int | None) -> None:
                prog.update(task, completed=done, total=total)

            return pipe.run_source(src, annotate=ann, progress=update)


def default_bundle_path() -> Path:
    from edgedf.runtime.pipeline import DEFAULT_BUNDLE

    return DEFAULT_BUNDLE


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _summary_table(results, pipe, Table):
    from rich.markup import escape

    table = Table(
        title=f"edgedf run · {pipe.bundle.describe()} · threshold {pipe.threshold:.2f} · "
        f"faces from {pipe.policy.min_face_px:g} px"
    )
    for col in ("Source", "Frames", "With face", "Tracks judged", "p(fake) top track", "Verdict", "Speed"):
        table.add_column(col, justify="left" if col in ("Source", "Verdict") else "right")
    for r in results:
        name = escape(r["source"] if "://" in r["source"] else Path(r["source"]).name)
        if r["status"] == "error":
            table.add_row(name, "-", "-", "-", "-", "[red]error[/red]", "-")
            continue
        v, s = r["video"], r["speed"]
        colour = {"fake": "red", "real": "green"}.get(v["verdict"], "yellow")
        speed = f"{s['analysed_fps']:.1f} fps" if s["analysed_fps"] else "-"
        if s["realtime_factor"]:
            speed += f" · {s['realtime_factor']:.1f}x RT"
        read = r["sampling"]["frames_read"]
        table.add_row(
            name,
            f"{v['n_frames_analysed']}/{read}",
            str(v["n_frames_with_face"]),
            f"{v['n_tracks_judged']}/{v['n_tracks']}",
            _fmt(v["score"]),
            f"[{colour}]{v['verdict']}[/{colour}]",
            speed,
        )
    return table
