"""`edgedf eval CHECKPOINT DATA...`: frame/video AUC, EER, AP, ACC per source/method and pooled."""

from __future__ import annotations

from pathlib import Path

import typer


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def register(app: typer.Typer) -> None:
    from edgedf.cli import cli_errors, console, err_console

    @app.command("eval")
    @cli_errors
    def eval_cmd(
        checkpoint: Path = typer.Argument(
            ..., help="A checkpoint folder (e.g. runs/NAME/model) or a bundle (scored by its backend, as on a device)."
        ),
        data: list[Path] = typer.Argument(..., help="Crops folders or dataset roots (prepared with the model's spec)."),
        fmt: str = typer.Option(
            "folder", "--format", "-f", help="Layout of raw dataset roots: ffpp|celebdf|dfdc|folder."
        ),
        split: str | None = typer.Option(None, "--split", help="Score only this split (e.g. test, or val,test)."),
        frames: int = typer.Option(32, "--frames", "-k", help="Frames per video when preparing."),
        splits: Path | None = typer.Option(None, "--splits", help="FF++: folder with train/val/test.json."),
        compression: list[str] = typer.Option(["c23"], "--compression", "-c", help="FF++ compressions."),
        threshold: float = typer.Option(0.5, "--threshold", help="Decision threshold on p(fake) for ACC."),
        cache: Path = typer.Option(Path("runs/eval_crops"), "--cache", help="Where raw datasets are prepared."),
        workers: int = typer.Option(2, "--workers", "-j"),
        batch_size: int = typer.Option(64, "--batch-size"),
        json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON here."),
    ) -> None:
        """Evaluate a checkpoint on one or more datasets (cross-dataset protocol: one row group per set)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from rich.table import Table

        from edgedf.runtime.fsutil import atomic_write_json
        from edgedf.train.evaluate import DatasetScores, crops_for, open_scorer, score_crops, summarize

        ck = open_scorer(checkpoint)
        results = []
        for d in data:
            quiet = (d / "index.jsonl").is_file()  # a crops folder: nothing to prepare
            with Progress(
                TextColumn(f"prepare {d.name}"), BarColumn(), MofNCompleteColumn(), console=err_console, disable=quiet
            ) as bar:
                task = bar.add_task("p", total=None)
                kw = {"splits_dir": splits, "compressions": compression} if fmt == "ffpp" else {}
                if fmt == "labels":
                    kw = {"splits_dir": splits}
                crops, report = crops_for(
                    d, ck.spec, fmt, cache, frames, workers,
                    on_progress=lambda done, total, t=task: bar.update(t, completed=done, total=total), **kw,
                )  # fmt: skip
            if report is not None and (report.no_face_frames or report.unreadable):
                err_console.print(
                    f"{d.name}: {report.no_face_frames} frames without a face, {len(report.unreadable)} unreadable "
                    f"(not scored; see {crops}/report.json)",
                    highlight=False,
                )
            results.append(DatasetScores(d.name, score_crops(ck, crops, split, batch_size), report))
        summary = summarize(results, threshold)
        summary["checkpoint"] = str(checkpoint)
        for ds in results:
            if ds.prepare_report is not None:
                summary.setdefault("faces", {})[ds.name] = {
                    "frames": ds.prepare_report.frames,
                    "no_face_frames": ds.prepare_report.no_face_frames,
                    "unreadable": len(ds.prepare_report.unreadable),
                }
        table = Table(title=f"edgedf eval {checkpoint} (ACC at p(fake) >= {threshold})")
        for col in ("Dataset", "Group", "Frames", "Videos", "Frame AUC", "Video AUC", "EER", "AP", "ACC"):
            table.add_column(col, justify="left" if col in ("Dataset", "Group") else "right")
        rows = [(name, g, m) for name, groups in summary["datasets"].items() for g, m in groups.items()]
        if "pooled" in summary:
            rows.append(("pooled", "all", summary["pooled"]))
        for name, g, m in rows:
            table.add_row(
                name, g, str(m["frames"]), str(m["videos"]), _f(m["frame_auc"]), _f(m["video_auc"]),
                _f(m["eer"]), _f(m["ap"]), _f(m["acc"]),
            )  # fmt: skip
        console.print(table)
        if json_out is not None:
            atomic_write_json(json_out, summary)
            console.print(f"wrote {json_out}", highlight=False)
