"""The `edgedf` command. Heavy imports (torch) happen inside the commands that need them, so the
device-side commands work on an install without torch."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgedf.runtime.errors import EdgedfError, one_line

app = typer.Typer(
    name="edgedf",
    help="Train, export and run deepfake detectors (full-precision and BitLinear ViTs) on edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Model presets: list them, initialise a checkpoint, smoke-check a model.")
app.add_typer(models_app, name="models")


def _console(stderr: bool = False) -> Console:
    """A terminal gets Rich's own width; a pipe, file or CI log gets tables at their full width (Rich
    would cut them to 80 columns there, "vit_…"), unless COLUMNS says otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty()) and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=1000 if piped else None)


console = _console()
err_console = _console(stderr=True)

F = TypeVar("F", bound=Callable)


INTERNAL_ERROR = 4  # a bug, not bad input: distinct from 1 (partly judged) and 2 (bad input)
DEBUG = {"on": os.environ.get("EDGEDF_DEBUG", "") not in ("", "0")}


def internal_error_line(e: BaseException) -> str:
    return f"internal error: {one_line(e)} (a bug in edgedf; rerun with --debug for the traceback)"


def cli_errors(fn: F) -> F:
    """Bad input -> one line on stderr and exit code 2; an unexpected error (a bug) -> one line and exit
    code 4, the traceback only with `edgedf --debug`; never a traceback that looks like a result."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgedfError as e:
            err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `edgedf ... | head`: the reader left; say nothing more, as a killed pipe would
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:
            if DEBUG["on"]:
                raise
            err_console.print(f"[red]{escape(internal_error_line(e))}[/red]", highlight=False, soft_wrap=True)
            raise typer.Exit(INTERNAL_ERROR) from None

    return wrapper  # type: ignore[return-value]


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise EdgedfError("this command needs the training extras: pip install 'edgedf[train]'") from None


FORMAT_HELP = "table (default) | json | csv: machine-readable output for scripts."


def emit_table(
    title: str,
    columns: list[str],
    rows: list[list[str]],
    fmt: str,
    left: tuple[str, ...] = (),
    records: list[dict] | None = None,
) -> None:
    """A table on stdout: Rich (complete in pipes too), or for scripts JSON (a list of objects) or CSV, from
    `records` (raw values: numbers stay numbers) where given, else from the displayed cells."""
    records = records if records is not None else [dict(zip(columns, r, strict=True)) for r in rows]
    if fmt == "json":
        import json

        print(json.dumps(records, indent=2))
    elif fmt == "csv":
        import csv

        w = csv.DictWriter(sys.stdout, fieldnames=list(records[0]) if records else columns, lineterminator="\n")
        w.writeheader()
        w.writerows(records)
    elif fmt == "table":
        table = Table(title=title)
        for col in columns:
            table.add_column(col, justify="left" if col in left else "right")
        for r in rows:
            table.add_row(*r)
        console.print(table)
    else:
        raise EdgedfError(f"--format must be table, json or csv, got {fmt!r}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


@models_app.callback(invoke_without_command=True)
@cli_errors
def models_list(
    ctx: typer.Context,
    img_size: int = typer.Option(224, "--img-size", help="Input size the sizes are computed for."),
    num_classes: int = typer.Option(2, "--num-classes"),
    fmt: str = typer.Option("table", "--format", help=FORMAT_HELP),
) -> None:
    """List the presets with parameter counts and weight size in fp32 / int8 / ternary-packed MB."""
    if ctx.invoked_subcommand is not None:
        return
    if fmt not in ("table", "json", "csv"):
        raise EdgedfError(f"--format must be table, json or csv, got {fmt!r}")
    _need_torch()
    from edgedf.train.vit import PRESETS, ViTConfig, build_model, count_params, size_bytes

    title = f"ViT presets at {img_size}px, {num_classes} classes (weights only, MB = 1e6 bytes)"
    columns = ["Preset", "dim", "depth", "heads", "Params fp", "Params bit", "fp32 MB", "int8 MB", "ternary MB",
               "fp32/ternary"]  # fmt: skip
    rows, records = [], []
    for name in PRESETS:
        try:
            cfg = ViTConfig.from_preset(name, img_size=img_size, num_classes=num_classes)
        except ValueError as e:
            raise EdgedfError(str(e)) from None
        n_fp = count_params(build_model(cfg, device="meta"))
        cfg_bit = ViTConfig.from_preset(name, img_size=img_size, num_classes=num_classes, variant="bit")
        n_bit = count_params(build_model(cfg_bit, device="meta"))
        s = size_bytes(cfg)
        rows.append([
            name,
            str(cfg.dim),
            str(cfg.depth),
            str(cfg.heads),
            f"{n_fp / 1e6:.2f} M",
            f"{n_bit / 1e6:.2f} M",
            _mb(s["fp32"]),
            _mb(s["int8"]),
            _mb(s["ternary"]),
            f"{s['fp32'] / s['ternary']:.1f}x",
        ])  # fmt: skip
        records.append({"preset": name, "dim": cfg.dim, "depth": cfg.depth, "heads": cfg.heads, "params_fp": n_fp,
                        "params_bit": n_bit, "fp32_bytes": s["fp32"], "int8_bytes": s["int8"],
                        "ternary_bytes": s["ternary"], "img_size": img_size, "num_classes": num_classes})  # fmt: skip
    emit_table(title, columns, rows, fmt, left=("Preset",), records=records)
    if fmt != "table":
        return
    console.print(
        "fp: full precision (bit: BitLinear, whose blocks trade their pre-norms for one norm per "
        "BitLinear). int8: per-channel weights. ternary: block linears at 2 bits, stem/norms/head fp32."
    )


def _model_config(
    preset: str, variant: str, img_size, patch_size, num_classes, dim, depth, heads, mlp_ratio, stem, bit_norm
):
    from edgedf.train.vit import ViTConfig

    try:
        return ViTConfig.from_preset(
            preset,
            variant=variant,
            img_size=img_size,
            patch_size=patch_size,
            num_classes=num_classes,
            dim=dim,
            depth=depth,
            heads=heads,
            mlp_ratio=mlp_ratio,
            stem=stem,
            bit_norm=bit_norm,
        )
    except ValueError as e:
        raise EdgedfError(str(e)) from None


@models_app.command("init")
@cli_errors
def models_init(
    preset: str = typer.Argument(..., help="vit_tiny | vit_small | vit_base"),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint directory to create."),
    variant: str = typer.Option("fp", "--variant", help="fp (full precision) or bit (BitLinear, ternary)."),
    img_size: int | None = typer.Option(None, "--img-size"),
    patch_size: int | None = typer.Option(None, "--patch-size"),
    num_classes: int | None = typer.Option(None, "--num-classes"),
    dim: int | None = typer.Option(None, "--dim"),
    depth: int | None = typer.Option(None, "--depth"),
    heads: int | None = typer.Option(None, "--heads"),
    mlp_ratio: float | None = typer.Option(None, "--mlp-ratio"),
    stem: str | None = typer.Option(None, "--stem", help="patch (strided patch embedding) or conv."),
    bit_norm: str | None = typer.Option(None, "--bit-norm", help="Norm inside BitLinear: rms or layer."),
    init_from: Path | None = typer.Option(
        None, "--from", help="Initialise from a timm/DeiT ViT state dict in a local .safetensors file."
    ),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Write a randomly initialised (or --from initialised) checkpoint, to try export and benchmarks."""
    _need_torch()
    import torch

    from edgedf.train.checkpoint import init_from_file, save_checkpoint
    from edgedf.train.vit import build_model, count_params

    cfg = _model_config(
        preset, variant, img_size, patch_size, num_classes, dim, depth, heads, mlp_ratio, stem, bit_norm
    )
    if out.exists() and not force:
        raise EdgedfError(f"output path already exists: {out} (choose another --out or pass --force)")
    torch.manual_seed(seed)
    model = build_model(cfg)
    meta = {"init": "random", "seed": seed}
    if init_from is not None:
        report = init_from_file(model, init_from)
        console.print(report.summary(), highlight=False)
        meta = {"init": str(init_from), "seed": seed, "loaded_tensors": len(report.loaded)}
    save_checkpoint(model, out, meta=meta, overwrite=force)
    console.print(
        f"wrote {out}  ({cfg.preset}, variant {cfg.variant}, {cfg.img_size}px, "
        f"{count_params(model) / 1e6:.2f} M params)",
        highlight=False,
    )


@models_app.command("check")
@cli_errors
def models_check(
    checkpoint: Path | None = typer.Argument(None, help="A checkpoint; default: fresh vit_tiny fp and bit."),
    batch: int = typer.Option(4, "--batch"),
    img_size: int = typer.Option(224, "--img-size"),
) -> None:
    """Smoke-check models on this machine: forward, backward, and the ternary inference form's parity."""
    _need_torch()
    from edgedf.train.smoke import smoke_check

    results = smoke_check(checkpoint, batch=batch, img_size=img_size)
    table = Table(title="edgedf model check")
    for col in ("Model", "Variant", "Params", "Forward ms/img", "Backward", "Inference form |Δlogit|", "Status"):
        table.add_column(col)
    ok = True
    for r in results:
        ok &= r.ok
        table.add_row(
            r.name,
            r.variant,
            f"{r.params / 1e6:.2f} M",
            f"{r.forward_ms:.1f}",
            "ok" if r.backward_ok else "FAIL",
            "-" if r.inference_max_diff is None else f"{r.inference_max_diff:.2e}",
            "✅" if r.ok else "❌",
        )
    console.print(table)
    if not ok:
        raise typer.Exit(1)


# Commands that live in their own modules: edgedf/commands/<name>.py defines `register(app)`.
# Heavy imports (torch) happen inside the command bodies, so `edgedf --help` and the device-side
# commands work without torch.
COMMAND_MODULES: tuple[str, ...] = ("prepare", "train", "eval", "export", "run", "demo", "bench", "report", "study")
for _name in COMMAND_MODULES:
    __import__(f"edgedf.commands.{_name}", fromlist=["register"]).register(app)


@app.command("targets")
@cli_errors
def targets(fmt: str = typer.Option("table", "--format", help=FORMAT_HELP)) -> None:
    """List the hardware target profiles."""
    from edgedf.devices.profiles import PROFILES

    columns = ["Target", "Device", "Backend", "Precisions", "Default fp / bit", "Threads", "Ternary lowering"]
    ps = list(PROFILES.values())
    avx2 = " where edgedf's kernel builds on an AVX2 CPU"
    rows = [
        [p.name, p.device, p.backend, ", ".join(p.precisions), f"{p.default_fp} / {p.default_bit}",
         str(p.threads or "all"),
         p.ternary_lowering + (f"; {p.ternary_lowering_avx2}{avx2}" if p.ternary_lowering_avx2 else "")]
        for p in ps
    ]  # fmt: skip
    records = [
        {"target": p.name, "device": p.device, "backend": p.backend, "precisions": list(p.precisions),
         "default_fp": p.default_fp, "default_bit": p.default_bit, "threads": p.threads,
         "ternary_lowering": p.ternary_lowering, "ternary_lowering_avx2": p.ternary_lowering_avx2}
        for p in ps
    ]  # fmt: skip
    if fmt == "csv":
        records = [{**r, "precisions": " ".join(r["precisions"])} for r in records]
    emit_table("Targets (edgedf export --target NAME)", columns, rows, fmt, left=tuple(columns), records=records)


def _print_version(value: bool) -> None:
    if value:
        from edgedf import __version__

        console.print(f"edgedf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an internal error."),
) -> None:
    """Train, export and run deepfake detectors (full-precision and BitLinear ViTs) on edge devices."""
    if debug:
        DEBUG["on"] = True


_RAY_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.\-]+:\d+)$")


def ray_flag_argv(argv: list[str]) -> list[str]:
    """`edgedf run --ray [ADDRESS]`: a bare --ray (followed by a source or another option) autodetects
    the cluster; Click options take a value, so give it an empty one."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == "--ray" and (i + 1 == len(out) or not _RAY_ADDRESS.match(out[i + 1])):
            out[i] = "--ray="
    return out


def main() -> None:
    try:
        app(args=ray_flag_argv(sys.argv[1:]))
    except EdgedfError as e:  # raised outside a command body (rare): still one line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
