"""`edgedf study`: the project's research questions in one command.

What do ternary weights (BitLinear), int8 post-training quantisation and int8 quantisation-aware training
cost and buy against fp32, on the hardware at hand? Given labelled data and the full-precision, QAT and
BitLinear checkpoints (or a training recipe to make the missing ones), it exports fp32, int8-ptq, int8-qat
and ternary bundles for each target this machine can run, benches them all in one `edgedf bench` call, and
writes the comparison (AUC frame/video and per data set, size, latency and throughput per backend, each
with its delta against fp32 on the same target) as study.md, study.html (self-contained) and study.json.
"""

from __future__ import annotations

import datetime as _dt
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import typer

ARMS = (("fp32", "fp"), ("int8-ptq", "fp"), ("int8-qat", "qat"), ("ternary", "bit"))


def default_targets() -> list[str]:
    """The targets whose backend runs here (TensorRT only where it is installed)."""
    from edgedf.devices.profiles import PROFILES
    from edgedf.runtime.backends import available

    out = [n for n in ("ort", "cpu", "jetson") if available(PROFILES[n].backend)]
    return out


def train_checkpoint(recipe: Path, out: Path, overrides: list[str], say) -> Path:
    """Train with the project's training loop (a recipe YAML plus key=value overrides); returns out/model."""
    from edgedf.train.config import load_config
    from edgedf.train.loop import train

    if (out / "model" / "config.json").is_file():
        say(f"reusing {out / 'model'}")
        return out / "model"
    cfg = load_config(recipe, [f"out={out}", "progress=false", *overrides])
    say(f"training {out.name}: {' '.join(overrides)}")
    train(cfg)
    return out / "model"


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its deltas against the fp32 row of the same target."""
    base = {r["target"]: r for r in rows if r.get("precision") == "fp32" and r.get("status") != "error"}
    out = []
    for r in rows:
        b = base.get(r["target"])
        d: dict[str, Any] = {
            "target": r["target"],
            "backend": r["backend"],
            "precision": r["precision"],
            "status": r["status"],
            "icon": r["icon"],
            "reason": r.get("reason"),
            "size_mb": r.get("size_mb"),
            "auc_frame": r.get("auc_frame"),
            "auc_video": r.get("auc_video"),
            "auc_frame_by_set": r.get("auc_frame_by_set"),
            "ms_b1": r.get("ms_b1"),
            "faces_s_b8": r.get("faces_s_b8"),
            "peak_rss_mb": r.get("peak_rss_mb"),
        }
        if b is not None:
            d["d_auc_frame"] = _sub(r.get("auc_frame"), b.get("auc_frame"))
            d["d_auc_video"] = _sub(r.get("auc_video"), b.get("auc_video"))
            d["size_vs_fp32"] = _div(r.get("size_mb"), b.get("size_mb"))
            d["speedup_b1_vs_fp32"] = _div(b.get("ms_b1"), r.get("ms_b1"))
            d["speedup_b8_vs_fp32"] = _div(r.get("faces_s_b8"), b.get("faces_s_b8"))
        out.append(d)
    return out


def bundle_from(bundle: Path, checkpoint: Path) -> bool:
    """Whether `bundle` (a study's earlier export in --work) was exported from this very checkpoint: its
    manifest records the weights' sha256. Anything else (another checkpoint, retrained, half-written)
    is exported again rather than benched under the wrong name."""
    from edgedf.runtime.fsutil import sha256_file

    try:
        recorded = json.loads((bundle / "manifest.json").read_text())["model"]["checkpoint_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return recorded == sha256_file(Path(checkpoint) / "model.safetensors")


def _sub(a, b):
    return None if a is None or b is None else round(a - b, 4)


def _div(a, b):
    return None if a is None or not b else round(a / b, 3)


def _fmt(v, spec: str, signed: bool = False) -> str:
    if v is None:
        return "-"
    return format(v, ("+" if signed else "") + spec)


def training_facts(meta: dict[str, Any]) -> str:
    """A checkpoint's validation facts as words and rounded figures (not a raw JSON dump)."""
    names = {"step": "step", "val_auc": "AUC", "val_acc": "acc", "val_eer": "EER", "val_loss": "loss"}
    parts = []
    for k, name in names.items():
        v = meta.get(k)
        if isinstance(v, bool) or v is None:
            continue
        parts.append(f"{name} {v}" if isinstance(v, int) else f"{name} {v:.3f}" if isinstance(v, float) else "")
    return ", ".join(p for p in parts if p) or "-"


def render(study: dict[str, Any], out: Path) -> tuple[Path, Path]:
    from edgedf.devices.bench import run_facts, status_cell
    from edgedf.devices.report import Doc, add_plots

    doc = Doc("edgedf study: fp32 vs int8-PTQ vs int8-QAT vs ternary (BitLinear)")
    h = study["bench"]["host"]
    doc.para(
        f"Measured on {h['cpu']} ({h['cores']} cores, load average {h.get('loadavg_1m')}) on {study['time']}; "
        f"data: {', '.join(study['data'])}; {study['minutes']:.1f} min in all."
    )
    if study.get("command"):
        doc.para(f"Command: {study['command']}")
    doc.para(f"Timing: {run_facts(study['bench'])}")
    doc.heading("Checkpoints")
    cks = study["checkpoints"]
    doc.table(
        ["Arm", "Checkpoint", "How it was made", "Training facts (its own validation split)"],
        [[k, v["path"], v["how"], training_facts(v.get("meta") or {})] for k, v in cks.items()],
    )
    doc.heading("Comparison (deltas against fp32 on the same target)")
    sets = sorted({s for r in study["comparison"] for s in (r.get("auc_frame_by_set") or {})})
    header = ["Target", "Backend", "Precision", "Status", "Size (MB)", "× fp32 size", "AUC frame", "Δ AUC frame",
              *[f"AUC {s}" for s in sets], "AUC video", "Δ AUC video", "ms/face b1", "speed-up b1", "faces/s b8",
              "speed-up b8", "peak RSS (MB)"]  # fmt: skip
    rows = []
    for r in study["comparison"]:
        by = r.get("auc_frame_by_set") or {}
        status = status_cell(r)
        rows.append(
            [r["target"], r["backend"], r["precision"], status, _fmt(r["size_mb"], ".2f"),
             _fmt(r.get("size_vs_fp32"), ".2f"), _fmt(r["auc_frame"], ".4f"), _fmt(r.get("d_auc_frame"), ".4f", True),
             *[_fmt(by.get(s), ".4f") for s in sets], _fmt(r["auc_video"], ".4f"),
             _fmt(r.get("d_auc_video"), ".4f", True), _fmt(r["ms_b1"], ".2f"), _fmt(r.get("speedup_b1_vs_fp32"), ".2f"),
             _fmt(r["faces_s_b8"], ".1f"), _fmt(r.get("speedup_b8_vs_fp32"), ".2f"), _fmt(r["peak_rss_mb"], ".0f")]
        )  # fmt: skip
    doc.table(header, rows)
    doc.para(
        "AUC frame pools every scored face crop of all data sets (AUC <set> per set); AUC video is the mean "
        "p(fake) per video (only where the data has videos). ms/face b1: median batch-1 latency after warm-up "
        "with the target's threads; faces/s b8: batch-8 throughput; speed-ups and sizes are against fp32 on "
        "the same target; peak RSS of a fresh process running the bundle. Status as in edgedf bench."
    )
    for note in study.get("notes", []):
        doc.para(note)
    doc.heading("Plots")
    images: dict[str, bytes] = {}
    rows_for_plots = [{**r, "host": ""} for r in study["bench"]["rows"]]
    add_plots(doc, rows_for_plots, images, prefix="study_")
    return doc.write(out, "study", images)


def register(app: typer.Typer) -> None:
    from edgedf.cli import cli_errors, console, err_console

    @app.command("study")
    @cli_errors
    def study_cmd(
        data: list[Path] = typer.Option(..., "--data", "-d", help="Labelled folder(s): real/ and fake/ (repeatable)."),
        fp: Path | None = typer.Option(None, "--fp", help="Full-precision checkpoint."),
        bit: Path | None = typer.Option(None, "--bit", help="BitLinear checkpoint."),
        qat: Path | None = typer.Option(None, "--qat", help="QAT checkpoint (edgedf train --qat --init FP)."),
        recipe: Path | None = typer.Option(None, "--recipe", help="Training recipe YAML to make missing checkpoints."),
        train_minutes: float = typer.Option(10.0, "--train-minutes", help="Wall-time budget per trained model."),
        qat_minutes: float = typer.Option(3.0, "--qat-minutes", help="QAT fine-tuning budget (from --fp)."),
        qat_lr: float = typer.Option(1e-4, "--qat-lr", help="Peak learning rate of the QAT fine-tuning."),
        targets: str | None = typer.Option(None, "--targets", help="Comma-separated; default: those runnable here."),
        calib: Path | None = typer.Option(
            None, "--calib", help="Face images for int8 calibration (not the eval data)."
        ),
        runs: int = typer.Option(50, "--runs", help="Timed runs per batch size."),
        verify_n: int = typer.Option(256, "--verify-n", help="Crops for each export's parity check."),
        work: Path = typer.Option(Path("runs/study"), "--work", help="Checkpoints and bundles go here."),
        out: Path = typer.Option(Path("benchmarks/study"), "--out", "-o", help="study.md, study.html, study.json."),
    ) -> None:
        """Export fp32 / int8-PTQ / int8-QAT / ternary bundles for this machine's targets, bench them, compare.

        Missing checkpoints are trained with --recipe (fp and bit for --train-minutes each, QAT fine-tuned
        from fp for --qat-minutes). Needs the train extra (torch) and matplotlib for the plots.
        """
        from edgedf.cli import _need_torch
        from edgedf.devices.bench import BenchOptions, bench
        from edgedf.devices.profiles import get_profile
        from edgedf.runtime.errors import EdgedfError
        from edgedf.runtime.fsutil import atomic_write_json

        _need_torch()
        from edgedf.export.api import ExportOptions, export_bundle

        t0 = time.perf_counter()
        say = lambda m: err_console.print(m, highlight=False)  # noqa: E731
        for d in data:
            if not d.is_dir():
                raise EdgedfError(f"data folder not found: {d}")
        names = [t.strip() for t in targets.split(",")] if targets else default_targets()
        profiles = [get_profile(n) for n in names]
        if not profiles:
            raise EdgedfError("no target can run on this machine (install onnxruntime or openvino)")
        ck: dict[str, dict[str, str]] = {}
        need = {"fp": fp, "bit": bit, "qat": qat}
        if (fp is None or bit is None or qat is None) and recipe is None:
            missing = ", ".join(f"--{k}" for k, v in need.items() if v is None)
            raise EdgedfError(f"missing {missing}: give the checkpoints or a --recipe to train them")
        for arm in ("fp", "bit"):
            if need[arm] is None:
                need[arm] = train_checkpoint(
                    recipe,
                    work / f"train_{arm}",
                    [f"model.variant={arm}", f"max_minutes={train_minutes}", "schedule=time", "max_steps=1000000"],
                    say,
                )
                ck[arm] = {"path": str(need[arm]), "how": f"trained here: {recipe}, variant {arm}, {train_minutes} min"}
            else:
                ck[arm] = {"path": str(need[arm]), "how": "given"}
        if need["qat"] is None:
            need["qat"] = train_checkpoint(
                recipe, work / "train_qat",
                ["model.variant=fp", "qat=true", f"init={need['fp']}", f"max_minutes={qat_minutes}", "schedule=time",
                 "max_steps=1000000", "warmup_steps=0", f"lr={qat_lr}", f"min_lr={qat_lr / 10}"],
                say,
            )  # fmt: skip
            ck["qat"] = {
                "path": str(need["qat"]),
                "how": f"QAT fine-tuned here from the fp checkpoint, {qat_minutes} min",
            }
        else:
            ck["qat"] = {"path": str(need["qat"]), "how": "given"}
        for v in ck.values():
            meta = Path(v["path"]) / "config.json"
            if meta.is_file():
                m = json.loads(meta.read_text()).get("meta") or {}
                v["meta"] = {kk: m[kk] for kk in m if kk == "step" or kk.startswith("val_")}

        bundles = []
        notes: list[str] = []
        for p in profiles:
            for precision, arm in ARMS:
                dest = work / "bundles" / f"{p.name}-{precision}"
                if not bundle_from(dest, need[arm]):
                    if dest.exists():  # the study's own export from another checkpoint: replaced
                        say(f"{dest} came from another checkpoint: exporting it again")
                        shutil.rmtree(dest)
                    say(f"export {p.name} {precision} from {arm}")
                    eo = ExportOptions(target=p.name, precision=precision, data=calib, out=dest, verify_n=verify_n)
                    try:
                        export_bundle(need[arm], eo)
                    except EdgedfError as e:
                        if "verification failed" not in str(e):
                            raise
                        # a finding, not an error: keep the bundle with its measured parity, so the bench
                        # shows it as ❎ with the figures, instead of leaving the arm out
                        notes.append(f"{p.name} {precision}: the export gate refused it ({e}); kept for the study")
                        say(notes[-1])
                        eo.min_agreement = 0.0
                        export_bundle(need[arm], eo)
                bundles.append(dest)
        say(f"bench {len(bundles)} bundles")
        result = bench(bundles, BenchOptions(data=list(data), runs=runs), say=say)
        study = {
            "kind": "edgedf-study",
            "version": 1,
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "data": [str(d) for d in data],
            "calibration": str(calib) if calib else "random images (no --calib)",
            "targets": names,
            "checkpoints": ck,
            "comparison": compare(result["rows"]),
            "bench": result,
            "minutes": (time.perf_counter() - t0) / 60,
            "notes": notes,
            "command": shlex.join(["edgedf", *sys.argv[1:]]),
        }
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "study.json", study)
        md, page = render(study, out)
        from edgedf.commands.bench import print_table

        print_table(result, console, "edgedf study")
        console.print(f"wrote {out / 'study.json'}, {md} and {page} ({study['minutes']:.1f} min)", highlight=False)
