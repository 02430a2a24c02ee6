"""`edgedf export`: checkpoint -> canonical ONNX -> lowered/quantised for one target -> verified bundle."""

from __future__ import annotations

import datetime as _dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

import edgedf
from edgedf.devices.profiles import TargetProfile, get_profile
from edgedf.runtime.aggregate import VerdictPolicy
from edgedf.runtime.bundle import FORMAT, FORMAT_VERSION, MANIFEST, file_entry, load_bundle, model_bytes
from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.fsutil import atomic_dir, atomic_write_bytes, atomic_write_json, sha256_file
from edgedf.runtime.parity import REFERENCE
from edgedf.runtime.ternary import fold_constant_inputs
from edgedf.train.checkpoint import Checkpoint, load_checkpoint
from edgedf.train.vit import count_params, size_bytes

from . import lowering, ptq
from .calib import crop_source
from .onnx_export import INPUT, OUTPUT, export_onnx, set_metadata
from .verify import verify, write_reference

MIN_AGREEMENT = 0.99


@dataclass
class ExportOptions:
    target: str
    precision: str | None = None
    data: Path | None = None
    fraction: float = 1.0
    imgsz: int | None = None
    batch: int | None = None  # fixed batch; None = dynamic batch
    out: Path | None = None
    verify: bool = True
    verify_n: int = 256
    calib_n: int = 256
    lowering: str | None = None  # override the profile's ternary lowering
    min_agreement: float = MIN_AGREEMENT  # the verification gate on decisive crops
    seed: int = 0
    notes: list[str] = field(default_factory=list)
    # decision threshold: calibrated on the real crops of these crops folders' dev splits (export/threshold.py)
    threshold_data: list[Path] = field(default_factory=list)
    threshold_split: str = "val,test"
    false_alarm: float = 0.01
    min_face_px: float | None = None  # verdict policy (runtime/aggregate.py); None: the default


def default_out(checkpoint: Path, target: str, precision: str) -> Path:
    ck = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return ck.parent / f"{ck.name}-{target}-{precision}"


def _precision(ck: Checkpoint, profile: TargetProfile, precision: str | None) -> str:
    cfg = ck.config
    if cfg.qat:
        precision = precision or "int8-qat"
        if precision != "int8-qat":
            raise EdgedfError(f"this is a QAT checkpoint: it exports as int8-qat, not {precision}")
    precision = precision or profile.default_precision(cfg.variant)
    profile.check_precision(precision, cfg.variant)
    if precision == "int8-qat" and not cfg.qat:
        raise EdgedfError("int8-qat needs a QAT-trained checkpoint (edgedf train --qat); for this one use int8-ptq")
    return precision


def _ternary_lowering(profile: TargetProfile, requested: str | None, notes: list[str]) -> str:
    """The lowering asked for, or the target's. OpenVINO's int8 Q/DQ kernels lose to fp32 without VNNI and to
    edgedf's native kernel with AVX-VNNI, AVX-512 VNNI or AMX, so on an AVX2 CPU the cpu target takes the native
    kernel (exact per-token codes; its AVX2 GEMM widens int16 sums only every 256 k) when it can be built here,
    with a note saying so."""
    chosen = requested or profile.ternary_lowering
    if chosen not in lowering.CHOICES:
        raise EdgedfError(f"unknown lowering {chosen!r}; choose one of {', '.join(lowering.CHOICES)}")
    if chosen == lowering.NATIVE:
        if profile.backend not in ("openvino", "ort"):
            raise EdgedfError("--lowering native runs in OpenVINO and ONNX Runtime only (targets cpu, ort, rpi, rpi4)")
        try:
            notes.append(f"native ternary kernel built here, {_native_path(profile.backend)} path")
        except EdgedfError as e:
            notes.append(f"{e}: verified with the ternary layers in stock ops")
    elif not requested and profile.ternary_lowering_avx2 == lowering.NATIVE:
        from edgedf.devices.bench import cpu_info

        if "avx2" in cpu_info()[1]:
            try:
                path = _native_path(profile.backend)
                notes.append(f"AVX2 on the export machine: target {profile.name} takes the native ternary kernel "
                             f"({path} path)")  # fmt: skip
                return lowering.NATIVE
            except EdgedfError as e:
                notes.append(f"{e}: target {profile.name} takes {chosen} (the native kernel is faster, and exact)")
    return chosen


def _native_path(backend: str) -> str:
    """The CPU path of edgedf's kernel for this backend, built here if needed (EdgedfError where it cannot be)."""
    from edgedf.runtime.backends import native_build, ort_native, ov_native

    return native_build.cpu_path(ort_native.library() if backend == "ort" else ov_native.extension())


def _save_onnx(proto: onnx.ModelProto, path: Path) -> None:
    atomic_write_bytes(path, proto.SerializeToString())


def _to_openvino(onnx_path: Path, xml: Path, fp16: bool = False) -> None:
    import openvino as ov

    data = onnx_path.read_bytes()
    folded = fold_constant_inputs(data)  # OpenVINO's MatMulNBits converter takes constants only
    if folded is not data:
        onnx_path = onnx_path.with_name(onnx_path.stem + "-folded.onnx")
        onnx_path.write_bytes(folded)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=fp16)


def export_bundle(checkpoint: Path, opts: ExportOptions, progress=None) -> tuple[Path, dict]:
    """Returns (bundle path, manifest). Nothing is left at the output path if any step fails."""
    say = progress or (lambda msg: None)
    profile = get_profile(opts.target)
    ck = load_checkpoint(checkpoint)
    precision = _precision(ck, profile, opts.precision)
    backend = profile.backend
    if backend == "openvino":
        from edgedf.runtime.backends import openvino as ov_backend

        if not ov_backend.available():
            raise EdgedfError(f"target {profile.name} needs OpenVINO to write its IR: {ov_backend.INSTALL_HINT}")
    out = opts.out or default_out(Path(checkpoint), profile.name, precision)
    if out.exists():
        raise EdgedfError(f"output path already exists: {out} (choose another --out or remove it)")
    if opts.batch is not None and opts.batch < 1:
        raise EdgedfError(f"--batch must be >= 1, got {opts.batch}")
    # checked before any work, not after the export
    policy = VerdictPolicy(*([opts.min_face_px] if opts.min_face_px is not None else []))
    if opts.threshold_data:
        from .threshold import check_false_alarm

        check_false_alarm(opts.false_alarm)
    source = crop_source(opts.data, ck.spec, opts.fraction, opts.seed)
    if opts.lowering and precision != "ternary":
        raise EdgedfError("--lowering applies to ternary exports only")
    notes = list(opts.notes)
    if "fake" in ck.labels and not opts.threshold_data and "threshold" not in ck.meta:
        notes.append(
            "threshold 0.5 not calibrated on real faces: its 'fake' verdicts have no known false-alarm rate "
            "(export with --threshold-data CROPS)"
        )
    lowering_used = _ternary_lowering(profile, opts.lowering, notes) if precision == "ternary" else None
    needs_calibration = precision == "int8-ptq" or lowering_used == "int8-qdq"
    if needs_calibration and source.kind == "random":
        notes.append("calibrated on random images (no --data): int8 ranges may not fit real faces")

    say("exporting canonical ONNX")
    canonical = export_onnx(
        ck.model, imgsz=opts.imgsz, batch=opts.batch or 1, dynamic=opts.batch is None, spec=ck.spec, labels=ck.labels
    )
    calibration: dict = {"needed": needs_calibration, **source.describe(), "fraction": opts.fraction}
    deviations: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgedf-export-") as work_s, atomic_dir(out) as tmp:
        work = Path(work_s)
        canon_path = work / "canonical.onnx"
        _save_onnx(canonical, canon_path)
        entry = "model.onnx"
        if precision == "ternary":
            scales = None
            if lowering_used == "int8-qdq":
                say(f"calibrating activation ranges on {opts.calib_n} crops")
                amax = ptq.ternary_act_amax(canonical, source, opts.calib_n)
                scales = {k: max(v, 1e-6) / 127.0 for k, v in amax.items()}
                calibration.update(method=ptq.TERNARY_CALIBRATION, crops=opts.calib_n)
                why = {
                    "tensorrt": "TensorRT has no per-token activation scales",
                    "openvino": "OpenVINO's int8 kernels take static Q/DQ scales",
                }.get(backend, "this lowering")
                deviations.append(
                    f"{why}: BitNet's per-token absmax int8 activations become static per-tensor Q/DQ with "
                    "calibrated scales"
                )  # fmt: skip
            ks = (ck.config.dim, int(ck.config.dim * ck.config.mlp_ratio))  # the linears' input sizes
            if dev := lowering.deviation(lowering_used, ks):
                deviations.append(dev)
            if lowering_used == lowering.NATIVE:  # the canonical graph itself
                lowered = canonical
            else:
                say(f"lowering TernaryLinear -> {lowering_used}")
                lowered = lowering.lower(canonical, lowering_used, scales)
            set_metadata(lowered, {"edgedf.lowering": lowering_used})
            model_path = work / "model.onnx"
            _save_onnx(lowered, model_path)
        elif precision == "int8-ptq" and backend in ("ort", "tensorrt"):
            say(f"post-training quantisation on {opts.calib_n} crops")
            model_path = work / "model.onnx"
            calibration.update(
                ptq.ort_quantize(canon_path, model_path, source, opts.calib_n, tensorrt=backend == "tensorrt")
            )
            if backend == "ort":  # reduce_range; TensorRT's GPU kernels have no such limit (full range there)
                deviations.append(ptq.HALF_RANGE)
        else:
            model_path = canon_path
        if backend == "openvino" and not (precision == "ternary" and lowering_used != "matmulnbits-2bit"):
            entry = "model.xml"
            if precision == "int8-ptq":
                say(f"NNCF quantisation on {opts.calib_n} crops")
                calibration.update(ptq.openvino_quantize(canon_path, tmp / entry, source, opts.calib_n))
                deviations.append(ptq.HALF_RANGE)
            else:
                _to_openvino(model_path, tmp / entry, fp16=precision == "fp16")
        else:
            proto = onnx.load(str(model_path))
            set_metadata(proto, {"edgedf.precision": precision, "edgedf.target": profile.name})
            _save_onnx(proto, tmp / entry)
        if backend == "tensorrt" and precision == "fp16":
            deviations.append(
                "fp16 is TensorRT's (a builder flag on TensorRT 10, an fp16 conversion before the build on 11): "
                "the ONNX is fp32 and parity here is checked in fp32"
            )

        reference = write_reference(tmp / REFERENCE, ck.model, source)  # for the device's own parity check
        files = {p.name: file_entry(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        bundle_bytes = model_bytes(files)  # the model's files; the reference crops are test data
        cfg = ck.config
        fp32_bytes = size_bytes(cfg)["fp32"]
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "edgedf_version": edgedf.__version__,
            "model": {
                "arch": "vit",
                "variant": cfg.variant,
                "preset": cfg.preset,
                "params": count_params(ck.model),
                "img_size": cfg.img_size,
                "config": cfg.to_dict(),
                "checkpoint": str(checkpoint),
                "trained": bool(ck.meta.get("step")),  # set by `edgedf train`; `models init` leaves it out
                "checkpoint_sha256": sha256_file(ck.path / "model.safetensors"),
                "meta": ck.meta,
            },
            "target": profile.name,
            "device": profile.device,
            "backend": backend,
            "precision": precision,
            "lowering": lowering_used,
            "threads": profile.threads,
            "entry": entry,
            "files": files,
            "input": {
                "name": INPUT,
                "shape": [opts.batch, cfg.in_chans, cfg.img_size, cfg.img_size],
                "dtype": "float32",
                "batch": opts.batch,
            },
            "output": {"name": OUTPUT, "shape": [opts.batch, cfg.num_classes], "dtype": "float32"},
            "preprocessing": ck.spec.to_dict(),
            "labels": ck.labels,
            "fake_index": ck.labels.index("fake") if "fake" in ck.labels else len(ck.labels) - 1,
            "threshold": float(ck.meta.get("threshold", 0.5)),
            "threshold_calibration": None,
            "verdict_policy": policy.to_dict(),
            "calibration": calibration,
            "size": {
                "bundle_bytes": bundle_bytes,
                "fp32_weight_bytes": fp32_bytes,
                "ratio_fp32_weights_to_bundle": round(fp32_bytes / bundle_bytes, 2),
            },
            "deviations": deviations,
            "notes": notes,
            "reference": reference,
            "parity": None,
        }
        atomic_write_json(tmp / MANIFEST, manifest)
        if opts.verify:
            say(f"verifying against PyTorch on {opts.verify_n} crops")
            bundle = load_bundle(tmp)
            manifest["parity"] = verify(bundle, ck.model, source, n=opts.verify_n)
            atomic_write_json(tmp / MANIFEST, manifest)
            ran = {k: v for k, v in manifest["parity"]["backends"].items() if v.get("status") == "ok"}
            if not ran:
                raise EdgedfError("verification could not run the bundle on any backend here (use --no-verify)")
            checks = [
                *ran.items(),
                *((f"{k} without edgedf's op", v["without_op"]) for k, v in ran.items() if "without_op" in v),
            ]
            for name, r in checks:
                agree = r["decisive_agreement"]
                if agree is not None and agree < opts.min_agreement:
                    raise EdgedfError(
                        f"verification failed: {name} agrees with PyTorch on {agree:.1%} of the "
                        f"{r['decisive_crops']} decisive crops (< {opts.min_agreement:.0%}; "
                        f"max |dp| {r['max_abs_dp']:.3g}); no bundle written (--no-verify to keep it anyway)"
                    )
        if opts.threshold_data:
            from .threshold import calibrate

            say(f"calibrating the threshold on real crops ({opts.false_alarm:.1%} false alarms)")
            cal = calibrate(tmp, opts.threshold_data, opts.false_alarm, opts.threshold_split)
            manifest["threshold"], manifest["threshold_calibration"] = cal["threshold"], cal
            atomic_write_json(tmp / MANIFEST, manifest)
    return out, manifest
