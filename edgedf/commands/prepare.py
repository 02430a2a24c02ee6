"""`edgedf prepare ROOT --format ffpp|celebdf|dfdc|folder|labels --out CROPS [--workers N | --ray [ADDRESS]]`."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    from edgedf.cli import cli_errors, console, err_console

    @app.command("prepare")
    @cli_errors
    def prepare_cmd(
        root: Path = typer.Argument(..., help="Dataset root (the published layout of --format)."),
        fmt: str = typer.Option("folder", "--format", "-f", help="ffpp | celebdf | dfdc | folder | labels"),
        out: Path = typer.Option(..., "--out", "-o", help="Crops folder to write (or resume)."),
        frames: int = typer.Option(32, "--frames", "-k", help="Frames per video, evenly spaced."),
        size: int = typer.Option(224, "--size", help="Crop size in pixels (the spec's input_size)."),
        crop_scale: float = typer.Option(1.3, "--crop-scale", help="Margin around the aligned face."),
        alignment: str = typer.Option("arcface5", "--alignment", help="arcface5 | box"),
        detector: str = typer.Option("retinaface", "--detector", help="retinaface | insightface:PATH | yunet:PATH"),
        splits: Path | None = typer.Option(
            None, "--splits", help="FF++ (and labels with target_id): folder with train/val/test.json."
        ),
        pad: float = typer.Option(
            0.0, "--pad", help="Border on each side before detection, x image size (tight crops: 0.3)."
        ),
        compression: list[str] = typer.Option(["c23"], "--compression", "-c", help="FF++: raw, c23, c40."),
        method: list[str] | None = typer.Option(None, "--method", "-m", help="FF++: methods (default all)."),
        label: str | None = typer.Option(None, "--label", help="folder: every file is real (or fake)."),
        val_fraction: float = typer.Option(0.0, "--val-fraction", help="folder: share of ids in split val."),
        workers: int = typer.Option(2, "--workers", "-j", help="Parallel processes."),
        ray: str | None = typer.Option(
            None,
            "--ray",
            help="Run on Ray (--out on shared storage): --ray alone autodetects; --ray auto | HOST:PORT | local.",
        ),
    ) -> None:
        """Sample frames, detect and align faces (the runtime's code), write crops and an index."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from edgedf.runtime.errors import EdgedfError
        from edgedf.runtime.spec import FaceCropSpec
        from edgedf.train.prepare import FFPP_METHODS, PrepareOptions, list_items, prepare

        if frames < 1 or workers < 1:
            raise EdgedfError("--frames and --workers must be >= 1")
        if not 0.0 <= pad <= 2.0:
            raise EdgedfError(f"--pad must lie in [0, 2], got {pad}")
        spec = FaceCropSpec(input_size=size, crop_scale=crop_scale, alignment=alignment)
        if detector != "retinaface":
            spec = spec.replace(detector=detector.partition(":")[0])
        items = list_items(
            root,
            fmt,
            splits_dir=splits,
            compressions=compression,
            methods=method or FFPP_METHODS,
            label=label,
            val_fraction=val_fraction,
        )
        with Progress(
            TextColumn("prepare"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console
        ) as bar:
            task = bar.add_task("prepare", total=len(items))
            report = prepare(
                items,
                out,
                spec,
                PrepareOptions(frames=frames, detector=detector, pad=pad),
                workers=workers,
                ray_address=ray or None,
                use_ray=ray is not None,
                on_progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        console.print(
            f"{report.sources} sources ({report.resumed} done before): {report.crops} crops from "
            f"{report.frames} frames; {report.no_face_frames} frames without a face; "
            f"{len(report.unreadable)} unreadable",
            highlight=False,
        )
        for g, n in sorted(report.by_group.items()):
            console.print(f"  {g}: {n} crops", highlight=False)
        for line in report.unreadable[:20]:
            err_console.print(f"unreadable: {line}", highlight=False, soft_wrap=True)
        if len(report.unreadable) > 20:
            err_console.print(f"... and {len(report.unreadable) - 20} more (see {out}/report.json)")
        console.print(f"wrote {out}/index.jsonl", highlight=False)
