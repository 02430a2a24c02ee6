"""`edgedf export CHECKPOINT --target T`: a verified, self-describing bundle for one hardware target."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    from rich.table import Table

    from edgedf.cli import _need_torch, cli_errors, console

    @app.command("export")
    @cli_errors
    def export(
        checkpoint: Path = typer.Argument(..., help="Checkpoint directory (config.json + model.safetensors)."),
        target: str = typer.Option(..., "--target", "-t", help="jetson | cpu | rpi | rpi4 | ort"),
        precision: str | None = typer.Option(
            None, "--precision", help="fp32 | fp16 | int8-ptq | int8-qat | ternary (default: the target's)"
        ),
        data: Path | None = typer.Option(None, "--data", help="Face crops for calibration and verification."),
        fraction: float = typer.Option(1.0, "--fraction", help="Fraction of --data to use."),
        imgsz: int | None = typer.Option(None, "--imgsz", help="Input size (must match the checkpoint)."),
        batch: int | None = typer.Option(None, "--batch", help="Fixed batch size (default: dynamic batch)."),
        dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic batch (the default unless --batch)."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Bundle directory to create."),
        no_verify: bool = typer.Option(False, "--no-verify", help="Skip (and do not gate on) verification."),
        verify_n: int = typer.Option(256, "--verify-n", help="Crops used for verification."),
        calib_n: int = typer.Option(256, "--calib-n", help="Crops used for calibration."),
        lowering: str | None = typer.Option(
            None,
            "--lowering",
            help="Override the target's ternary lowering: int8-exact, int8-dynamic, matmulnbits-2bit, int8-qdq, or "
            "native (edgedf's own kernel, built on the device; OpenVINO and ONNX Runtime targets).",
        ),
        note: list[str] = typer.Option([], "--note", help="A note for the manifest (repeatable): what this is."),
        threshold_data: list[Path] = typer.Option(
            [], "--threshold-data", help="Crops folder(s) whose real dev crops calibrate the threshold (repeatable)."
        ),
        threshold_split: str = typer.Option("val,test", "--threshold-split", help="Their split(s) to use."),
        false_alarm: float = typer.Option(
            0.01, "--false-alarm", help="Share of real crops allowed above the threshold."
        ),
        min_face: float | None = typer.Option(
            None, "--min-face", help="Faces smaller (px, shorter box side) are not judged."
        ),
    ) -> None:
        """Export a checkpoint to a verified bundle for one target (TensorRT, OpenVINO or ONNX Runtime)."""
        _need_torch()
        from edgedf.export.api import ExportOptions, export_bundle
        from edgedf.runtime.errors import EdgedfError

        if dynamic and batch is not None:
            raise EdgedfError("--dynamic and --batch exclude each other")
        opts = ExportOptions(
            target=target,
            precision=precision,
            data=data,
            fraction=fraction,
            imgsz=imgsz,
            batch=batch,
            out=out,
            verify=not no_verify,
            verify_n=verify_n,
            calib_n=calib_n,
            lowering=lowering,
            notes=list(note),
            threshold_data=list(threshold_data),
            threshold_split=threshold_split,
            false_alarm=false_alarm,
            min_face_px=min_face,
        )
        with console.status("exporting") as status:
            path, m = export_bundle(checkpoint, opts, progress=lambda msg: status.update(msg))
        _summary(path, m)

    def _summary(path: Path, m: dict) -> None:
        t = Table(title=f"bundle {path}", show_header=False)
        t.add_row(
            "model",
            f"{m['model']['preset'] or 'vit'} · {m['model']['variant']} · "
            f"{m['model']['params'] / 1e6:.2f} M params · {m['model']['img_size']} px",
        )
        t.add_row("target", f"{m['target']} ({m['device']})")
        t.add_row(
            "backend · precision",
            f"{m['backend']} · {m['precision']}" + (f" · lowering {m['lowering']}" if m["lowering"] else ""),
        )
        t.add_row(
            "size",
            f"{m['size']['bundle_bytes'] / 1e6:.2f} MB "
            f"(fp32 weights {m['size']['fp32_weight_bytes'] / 1e6:.2f} MB, "
            f"{m['size']['ratio_fp32_weights_to_bundle']}x smaller)",
        )
        cal = m["calibration"]
        if cal.get("needed"):
            t.add_row("calibration", f"{cal.get('source')} · {cal.get('crops', '')} crops")
        parity = m.get("parity")
        if parity:
            for name, r in parity["backends"].items():
                if r.get("status") != "ok":
                    t.add_row(f"parity {name}", r.get("status", "?"))
                    continue
                da = r["decisive_agreement"]
                t.add_row(
                    f"parity {name}" + (" (proxy for tensorrt)" if parity.get("proxy_for") else ""),
                    f"max |Δp| {r['max_abs_dp']:.2e} · agreement {r['agreement']:.1%}"
                    + (f" (decisive {da:.1%} of {r['decisive_crops']})" if da is not None else "")
                    + f" · logit cos {r['logit_cosine']:.5f}  [{parity['crops']} crops, {parity['source']}]",
                )
        else:
            t.add_row("parity", "not verified (--no-verify)")
        for d in m["deviations"] + m["notes"]:
            t.add_row("note", d)
        if m["backend"] == "tensorrt":
            from edgedf.runtime.backends.tensorrt import trtexec_command

            chw = tuple(m["input"]["shape"][1:]) if m["input"]["batch"] is None else None
            by_hand = {}
            for v in ("10", "11"):
                fp16 = " --fp16" if v == "11" and m["precision"] == "fp16" else ""
                build = trtexec_command("model.trt.onnx", m["precision"], "model.engine", v, m["input"]["name"], chw)
                by_hand[v] = f"python -m edgedf.runtime.ternary {path} model.trt.onnx{fp16} && {build}"
            t.add_row("engine", "built on the device at first run, cached per GPU model and TensorRT version")
            t.add_row("by hand, TensorRT 10 (JetPack 6)", by_hand["10"])
            t.add_row("by hand, TensorRT 11", by_hand["11"])
        console.print(t)
