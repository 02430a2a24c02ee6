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

    from edgedf.cli import DEBUG, cli_errors, console, err_console
    from edgedf.runtime.errors import EdgedfError

    @app.command("run")
    @cli_errors
    def run(
        sources: list[str] | None = typer.Argument(
            None, help="Video files, images, directories of them, animated WebP/GIF, a camera index, an RTSP/HTTP URL."
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
        jsonl: Path | None = typer.Option(
            None, "--jsonl", help="Write one JSON line per source as it finishes (flushed); --resume continues it."
        ),
        resume: bool = typer.Option(False, "--resume", help="Skip sources already judged in --jsonl FILE."),
        from_list: Path | None = typer.Option(
            None, "--from-list", help="Read sources from FILE (one path or URL a line; '-': stdin)."
        ),
        workers: int = typer.Option(1, "--workers", "-j", help="Worker processes on this machine (or Ray actors)."),
        ray: str | None = typer.Option(
            None,
            "--ray",
            help="Run on Ray: --ray alone autodetects (RAY_ADDRESS, `ray start`, else local); "
            "--ray auto | HOST:PORT | ray://HOST:PORT | local.",
        ),
        annotate: Path | None = typer.Option(None, "--annotate", help="Write an annotated video (mp4) here."),
        plot: Path | None = typer.Option(None, "--plot", help="Write a PNG timeline of p(fake) per track here."),
        threads: int = typer.Option(
            0, "--threads", help="Threads per backend session (0: backend default; with workers, cores / workers)."
        ),
        batch: int = typer.Option(8, "--batch", help="Face crops per classifier call."),
        stream_timeout: float = typer.Option(
            10.0, "--stream-timeout", help="Streams: seconds a read may stall before the stream counts as lost."
        ),
        max_pixels: float = typer.Option(
            120.0,
            "--max-pixels",
            help="Refuse still images larger than this many megapixels (memory on small devices).",
        ),
        reconnect: int = typer.Option(
            5, "--reconnect", help="Live streams: reopen attempts per outage (back-off 1, 2, 4, ... s; 0: none)."
        ),
        no_frames: bool = typer.Option(False, "--no-frames", help="Leave per-frame records out of the report."),
    ) -> None:
        """Detect, track, align and classify faces; print verdicts, optionally write report, video, plot."""
        from edgedf.runtime.bundle import load_bundle
        from edgedf.runtime.decode import Sampling, StreamPolicy, check_source, expand_sources, read_source_list
        from edgedf.runtime.fsutil import check_output_file
        from edgedf.runtime.pipeline import RunOptions, error_section
        from edgedf.runtime.report import ResultLog, build_report, exit_code, plot_timeline, write_report
        from edgedf.runtime.scale import (
            Job,
            PipelineSpec,
            default_threads,
            ray_workers,
            run_in_process,
            run_key,
            run_pool,
            run_ray,
        )

        chosen = [(m, v) for m, v in (("every", every), ("fps", fps), ("frames", frames)) if v is not None]
        if len(chosen) > 1:
            raise EdgedfError("choose one of --every, --fps, --frames")
        sampling = Sampling(*chosen[0]) if chosen else Sampling()
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise EdgedfError(f"--threshold must lie in [0, 1], got {threshold}")
        if batch < 1:
            raise EdgedfError("--batch must be at least 1")
        if workers < 1 or threads < 0:
            raise EdgedfError("--workers must be at least 1 and --threads at least 0")
        if min_face is not None and not 0.0 <= min_face < 1e5:
            raise EdgedfError(f"--min-face must be a size in pixels >= 0, got {min_face}")
        if not 0 < max_pixels <= 10_000:
            raise EdgedfError(f"--max-pixels must lie in (0, 10000] megapixels, got {max_pixels}")
        if resume and jsonl is None:
            raise EdgedfError("--resume needs --jsonl FILE: the per-source log it continues")
        listed = read_source_list(from_list) if from_list is not None else []
        if not sources and not listed:
            raise EdgedfError("no source given: name files, directories or URLs, or --from-list FILE")

        # outputs checked before any analysis: a bad path must not cost a finished run
        json_out = check_output_file(json_out, "--json") if json_out is not None else None
        jsonl = check_output_file(jsonl, "--jsonl") if jsonl is not None else None
        plot = check_output_file(plot, "--plot") if plot is not None else None
        annotate = check_output_file(annotate, "--annotate") if annotate is not None else None
        bundle_path = bundle if bundle is not None else default_bundle_path()
        b = load_bundle(bundle_path)
        opts = RunOptions(
            sampling=sampling, detect_every=detect_every, batch=batch, threshold=threshold,
            keep_frames=not no_frames, min_face_px=min_face, stream=StreamPolicy(stream_timeout, reconnect),
            max_image_pixels=max_pixels * 1e6,
        )  # fmt: skip
        if plot is not None:
            opts.keep_frames = True  # the plot reads the per-frame records
        paths = expand_sources([*(sources or []), *listed])
        jobs = [
            Job(i, src, str(annotate_path(annotate, i, src, len(paths))) if annotate is not None else None)
            for i, src in enumerate(paths)
        ]
        mode = "ray" if ray is not None else "workers" if workers > 1 else "local"
        n_threads = threads or (default_threads(workers) if mode == "workers" else 0)
        ray_address = ray or None  # a bare --ray: Ray's own autodetection
        if mode == "ray":
            n_threads = threads or 1  # one CPU per actor: processes, not threads, fill a node
            workers = ray_workers(ray_address, n_threads) if workers == 1 else workers  # connects first
        spec = PipelineSpec(str(bundle_path), backend, detector, n_threads, opts)
        log = ResultLog(jsonl, run_key(spec, b), resume) if jsonl is not None else None
        sections: dict[int, dict] = {}
        if log is not None:
            for job in jobs:
                if (old := log.done(job.source)) is not None:
                    sections[job.index] = old
        for job in jobs:  # sources that cannot be read are found before any model is loaded
            if job.index not in sections and (problem := check_source(job.source)) is not None:
                sections[job.index] = error_section(job.source, problem)
                err_console.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)
        resumed = sum(1 for j in jobs if j.index in sections and sections[j.index]["status"] != "error")
        todo = [j for j in jobs if j.index not in sections]
        facts, pipe = None, None
        execution = {
            "mode": mode, "workers": workers if mode != "local" else 1,
            "resumed": resumed, "retried": [], "interrupted": False,
        }  # fmt: skip
        stop = _StopOnSignal(graceful=mode == "local")  # after ray.init, which installs its own SIGTERM handler
        try:
            if not todo:
                outcomes = iter(())
            elif mode == "ray":
                outcomes = run_ray(spec, todo, workers, ray_address, n_threads, debug=DEBUG["on"])
            elif mode == "workers":
                outcomes = run_pool(spec, todo, workers, debug=DEBUG["on"])
            else:
                pipe = spec.build(b)
                outcomes = run_in_process(pipe, todo, DEBUG["on"], _frame_progress(err_console, len(jobs)),
                                          log.event if log is not None else None, stop.requested)  # fmt: skip
            if log is not None:
                for job in jobs:
                    if job.index in sections and sections[job.index]["status"] == "error":
                        log.add(job.index, sections[job.index])
            with _SourceProgress(err_console, len(jobs), len(jobs) - len(todo), mode) as prog:
                for out in outcomes:
                    sections[out.job.index] = out.section
                    facts = facts or out.facts
                    if out.attempts > 1:
                        execution["retried"].append({"source": out.job.source, "attempts": out.attempts})
                    if log is not None:
                        log.add(out.job.index, out.section, out.attempts)
                    prog.done(out.section)
        except KeyboardInterrupt:
            stop.signalled = True
        finally:
            stop.restore()
            if log is not None:
                log.close()
        if stop.signalled:
            execution["interrupted"] = True
            _finish_interrupted(json_out, sections, facts, jobs, execution, err_console)
            raise typer.Exit(130)
        results = [sections[j.index] for j in jobs]
        if facts is None and (json_out is not None or any(r["status"] != "error" for r in results)):
            # every source resumed, unreadable or lost: the facts of a pipeline built here
            pipe = pipe or spec.build(b)
            facts = pipe.describe()
        threshold_used = facts["model"]["threshold"] if facts else None
        if plot is not None and any(r["status"] != "error" for r in results):
            plot_timeline(plot, results, threshold_used)
        if no_frames:
            for r in results:
                r["frames"] = []
        if json_out is not None:
            write_report(json_out, build_report(facts, results, execution))
        if any(r["status"] != "error" for r in results):
            console.print(_summary_table(results, b, threshold_used, facts, Table))
            notes = b.notes
            if notes and bundle is None:
                console.print(f"[yellow]note:[/yellow] {escape(notes)}", highlight=False)
            if threshold is None and "fake" in b.labels and b.manifest.get("threshold_calibration") is None:
                err_console.print(
                    f"[yellow]warning:[/yellow] this bundle's threshold ({b.threshold:.2f}) was not calibrated on "
                    "real faces, so its 'fake' verdicts have no known false-alarm rate: export it with "
                    "--threshold-data CROPS, or pass --threshold",
                    highlight=False,
                    soft_wrap=True,
                )
        code = exit_code(results)
        if code:
            raise typer.Exit(code)

    class _StopOnSignal:
        """SIGINT (Ctrl-C) and SIGTERM (systemd, docker stop) end the run with the results so far.

        In this process (`graceful`) the first signal asks the source being analysed to stop after its
        current frame (a stream is then judged on what was seen, status partial); a second one interrupts
        at once. With workers or Ray the signal interrupts at once and the finished sources are kept.
        """

        def __init__(self, graceful: bool):
            import signal
            import threading

            self.signalled, self.graceful, self.saved = False, graceful, {}
            if threading.current_thread() is not threading.main_thread():
                return
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)

        def _handle(self, signum, frame):
            if self.graceful and not self.signalled:
                self.signalled = True
                return
            self.signalled = True
            raise KeyboardInterrupt

        def requested(self) -> bool:
            return self.signalled

        def restore(self) -> None:
            import signal

            for sig, handler in self.saved.items():
                signal.signal(sig, handler)

    def _finish_interrupted(json_out, sections, facts, jobs, execution, err_console):
        """Ctrl-C or SIGTERM: the sources finished so far go into the report; the rest are left out."""
        from edgedf.runtime.report import build_report, write_report

        n = len(sections)
        if json_out is not None and sections and facts is not None:
            done = [sections[j.index] for j in jobs if j.index in sections]
            write_report(json_out, build_report(facts, done, execution))
        err_console.print(
            f"interrupted: {n} of {len(jobs)} sources finished"
            + (f", report written to {json_out}" if json_out is not None and n and facts is not None else "")
            + " (--jsonl FILE --resume continues a run)",
            highlight=False, soft_wrap=True,
        )  # fmt: skip

    class _SourceProgress:
        """Each finished source: its warnings and errors on stderr; with several sources, a line per source
        (in pipes and logs) or a bar (on a terminal)."""

        def __init__(self, err_console, total: int, resumed: int, mode: str):
            self.console, self.total, self.n = err_console, total, resumed
            self.bar = None
            if total > 1 and err_console.is_terminal and mode != "local":
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                self.bar = Progress(TextColumn("run"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                    console=err_console, transient=True)  # fmt: skip
                self.task = self.bar.add_task("run", total=total, completed=resumed)

        def __enter__(self):
            if self.bar is not None:
                self.bar.start()
            return self

        def __exit__(self, *exc):
            if self.bar is not None:
                self.bar.stop()

        def done(self, r: dict) -> None:
            self.n += 1
            con = self.bar.console if self.bar is not None else self.console
            src = r["source"]
            count = f"[{self.n}/{self.total}] " if self.total > 1 else ""
            if r["status"] == "error":
                con.print(f"{count}[red]error:[/red] {escape(source_error(r))}", highlight=False, soft_wrap=True)
            for w in r["warnings"]:  # on the console too, not only in the JSON
                con.print(f"[yellow]warning:[/yellow] {escape(src)}: {escape(w)}", highlight=False, soft_wrap=True)
            if count and r["status"] != "error":
                v = r["video"]
                score = "-" if v.get("score") is None else f"{v['score']:.3f}"
                con.print(f"{count}{escape(src)}: {v['verdict']} (p(fake) {score})", highlight=False, soft_wrap=True)
            if self.bar is not None:
                self.bar.update(self.task, completed=self.n)

    def _frame_progress(err_console, n_sources: int):
        """In this process, on a terminal: a bar over the frames of the source being analysed."""
        if not err_console.is_terminal:
            return None
        from contextlib import ExitStack

        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        stack = ExitStack()

        def for_job(job):
            stack.close()
            prog = stack.enter_context(Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                                                console=err_console, transient=True))  # fmt: skip
            task = prog.add_task(escape(Path(job.source).name if "://" not in job.source else job.source), total=None)

            def update(done: int, total: int | None) -> None:
                prog.update(task, completed=done, total=total)
                if total is not None and done >= total:
                    stack.close()

            return update

        return for_job


def source_error(section: dict) -> str:
    """A failed source's error line, naming the source once."""
    err, src = section["error"], section["source"]
    return err if src in err else f"{src}: {err}"


def default_bundle_path() -> Path:
    from edgedf.runtime.pipeline import DEFAULT_BUNDLE

    return DEFAULT_BUNDLE


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _summary_table(results, bundle, threshold, facts, Table):
    from rich.markup import escape

    table = Table(
        title=f"edgedf run · {bundle.describe()} · threshold {threshold:.2f} · "
        f"faces from {facts['model']['verdict_policy']['min_face_px']:g} px"
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
