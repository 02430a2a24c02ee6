"""`edgedf bench BUNDLE...`: one table of status, size, AUC, latency and memory per bundle on this machine."""

from __future__ import annotations

from pathlib import Path

import typer


def parse_batches(text: str) -> tuple[int, ...]:
    from edgedf.runtime.errors import EdgedfError

    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EdgedfError(f"--batch takes comma-separated integers, e.g. 1,8; got {text!r}") from None
    if not out or min(out) < 1:
        raise EdgedfError(f"--batch takes positive batch sizes, got {text!r}")
    return out


def print_table(result: dict, console, title: str) -> None:
    from rich.table import Table

    from edgedf.devices.bench import batch_note, columns, run_facts, table_cells

    batches = result["options"]["batches"]
    table = Table(title=title, caption=f"{batch_note(batches)} {run_facts(result)}", caption_justify="left")
    for col in columns(batches):
        table.add_column(col, justify="left" if col in ("Target", "Backend", "Precision", "Status") else "right")
    for r in result["rows"]:
        table.add_row(*table_cells(r))
    console.print(table)


def register(app: typer.Typer) -> None:
    from edgedf.cli import cli_errors, console, err_console

    @app.command("bench")
    @cli_errors
    def bench_cmd(
        bundles: list[Path] = typer.Argument(..., help="Bundle folders (from edgedf export)."),
        data: list[Path] = typer.Option(
            [], "--data", "-d", help="Labelled folder: real/ and fake/ with face images and/or videos (repeatable)."
        ),
        target: str | None = typer.Option(
            None, "--target", "-t", help="Bench under this target profile (threads, backend); default: each bundle's."
        ),
        batch: str = typer.Option("1,8", "--batch", "-b", help="Batch sizes to time, comma-separated."),
        runs: int = typer.Option(50, "--runs", "-n", help="Timed runs per batch size (after warm-up)."),
        warmup: int = typer.Option(10, "--warmup", help="Untimed runs first."),
        rounds: int = typer.Option(
            1, "--rounds", help="Time every bundle R times, in turn, each in a fresh process (shared machines)."
        ),
        threads: int | None = typer.Option(None, "--threads", help="Override the profile's thread count."),
        floor: float | None = typer.Option(
            None, "--floor", help="AUC floor: exit 1 when a bundle scores below it (needs --data)."
        ),
        out: Path = typer.Option(Path("bench"), "--out", "-o", help="Folder for the JSON, bench.md and the log."),
        strict: bool = typer.Option(False, "--strict", help="Exit 1 when any bundle does not pass (CI)."),
    ) -> None:
        """Benchmark bundles here: status, size, frame/video AUC, latency (median, p90, p99), throughput, peak RSS.

        Status: ✅ pass: runs and passes; ❎ fail: runs but fails parity or the --floor; ❌ error: does not run
        here (reason given). --strict exits 1 unless every bundle passes.
        Writes OUT/bench-<time>.json and OUT/bench.md, and appends to OUT/bench.log.jsonl.
        """
        from edgedf.devices.bench import BenchOptions, below_floor, bench, failed_rows, write_results

        opts = BenchOptions(
            data=list(data), target=target, batches=parse_batches(batch), runs=runs, warmup=warmup,
            floor=floor, threads=threads, rounds=rounds,
        )  # fmt: skip
        result = bench(bundles, opts, say=lambda m: err_console.print(m, highlight=False))
        h = result["host"]
        print_table(result, console, f"edgedf bench · {h['cpu']} · {h['cores']} cores")
        jpath, md, log = write_results(result, out)
        console.print(f"wrote {jpath} and {md}; appended to {log}", highlight=False)
        low = below_floor(result)
        if low:
            err_console.print(
                f"{len(low)} bundle(s) below the AUC floor {floor}: " + ", ".join(r["bundle"] for r in low),
                highlight=False,
            )
            raise typer.Exit(1)
        failed = failed_rows(result)
        if strict and failed:
            err_console.print(
                f"--strict: {len(failed)} bundle(s) did not pass: "
                + "; ".join(f"{r['bundle']} ({r['status']}: {r.get('reason')})" for r in failed),
                highlight=False, soft_wrap=True,
            )  # fmt: skip
            raise typer.Exit(1)
