"""`edgedf report RESULTS.json... --out DIR`: bench results of several devices in one Markdown + HTML report."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    from edgedf.cli import cli_errors, console

    @app.command("report")
    @cli_errors
    def report_cmd(
        results: list[Path] = typer.Argument(..., help="Bench results: bench-*.json or bench.log.jsonl files."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for report.md, report.html and the PNG plots."),
        title: str = typer.Option("edgedf bench report", "--title"),
    ) -> None:
        """Merge bench results: a table per target and plots (latency vs AUC with its Pareto front, size per
        precision, per-stage runtime). report.html is self-contained (plots embedded); needs edgedf[plot]."""
        from edgedf.devices.report import write_report

        md, page = write_report(results, out, title)
        console.print(f"wrote {md} and {page}", highlight=False)
