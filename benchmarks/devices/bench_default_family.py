"""Bench the shipped default bundle and its model family on this machine: ONNX Runtime (target ort) and
OpenVINO (target cpu) at fp32, int8-ptq and ternary, on the labelled deepfake sets in ../shared/data.

The default bundle (runtime/assets/default_bundle) is one bundle. Its siblings are exported from the
checkpoints of the same model family:
- a trained default (manifest model.trained, model.checkpoint present here with the recorded sha256): the
  ternary bundles from that very BitLinear checkpoint, and fp32 / int8-ptq from --fp, the full-precision
  twin (same architecture and recipe; int8 applies to full-precision models only);
- the untrained placeholder (scripts/make_default_bundle.py): the checkpoint that made it (random init,
  seed from the manifest; checked to give the shipped bundle's logits) and its BitLinear twin.
--fp/--bit override either.

    python benchmarks/devices/bench_default_family.py --fp runs/detector_fp/model     # ~6 min, 2-core CPU

Writes benchmarks/devices/results.json (the bench result), results.md and results.html (as edgedf
report writes them, with its PNG plots), and appends to benchmarks/devices/bench.log.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgedf.runtime.fsutil import sha256_file

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DATA = ROOT.parent / "shared" / "data"
EVAL_SETS = [DATA / "deepfakes" / "ciplab_splice", DATA / "deepfakes" / "stylegan"]
CALIB = DATA / "faces" / "ffhq_train"  # real faces, not the evaluation sets
DEFAULT = ROOT / "runtime" / "assets" / "default_bundle"
EXPORTS = [("ort", "fp32"), ("ort", "int8-ptq"), ("ort", "ternary"), ("cpu", "fp32"), ("cpu", "int8-ptq"),
           ("cpu", "ternary")]  # fmt: skip


def default_checkpoints(work: Path) -> tuple[Path, Path, dict]:
    import torch

    from edgedf.runtime.backends import open_classifier
    from edgedf.runtime.bundle import load_bundle
    from edgedf.train.checkpoint import save_checkpoint
    from edgedf.train.vit import ViTConfig, build_model

    cfg = json.loads((DEFAULT / "manifest.json").read_text())["model"]["config"]
    seed = json.loads((DEFAULT / "manifest.json").read_text())["model"].get("seed", 0)
    out = {}
    for variant in ("fp", "bit"):
        torch.manual_seed(seed)
        c = ViTConfig(**{**cfg, "variant": variant})
        out[variant] = save_checkpoint(build_model(c).eval(), work / f"default_{variant}", meta={"seed": seed})
    # the fp checkpoint is the shipped bundle's model: same logits on the same input
    torch.manual_seed(seed)
    m = build_model(ViTConfig(**cfg)).eval()
    x = np.random.default_rng(0).standard_normal((4, 3, cfg["img_size"], cfg["img_size"])).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    shipped = open_classifier(load_bundle(DEFAULT)).infer(x)
    check = {"max_abs_logit_diff_vs_shipped": float(np.abs(ref - shipped).max())}
    assert check["max_abs_logit_diff_vs_shipped"] < 1e-3, check
    return out["fp"], out["bit"], check


def DEFAULT_DESC() -> str:  # noqa: N802
    m = json.loads((DEFAULT / "manifest.json").read_text())
    t = "trained" if m["model"].get("trained") else "untrained placeholder"
    return f"{m['model'].get('variant')} ViT, {m['precision']} on {m['backend']} ({m.get('lowering')}), {t}"


def render(res: dict, out: Path) -> None:
    from edgedf.devices.bench import COLUMNS, run_facts, table_cells
    from edgedf.devices.report import Doc, add_plots, merged_rows

    h, w = res["host"], res["what"]
    doc = Doc("edgedf bench: the default bundle's family on this CPU")
    doc.para(
        f"{h['cpu']} ({', '.join(h.get('cpu_flags') or []) or 'no AVX2/VNNI flags'}), {h['cores']} cores, "
        f"1-min load average {h.get('loadavg_1m')} when the bench started; "
        f"onnxruntime {h['backends'].get('ort')}, openvino {h['backends'].get('openvino')}; {res['time']}. "
        "Made by python benchmarks/devices/bench_default_family.py. TensorRT (target jetson): not measured, no "
        "NVIDIA GPU was available to this run. A load average near or above the core count means other work "
        "shared the machine: medians are then indicative, and wide p90/p99 are that contention."
    )
    doc.heading("What was benched")
    doc.table(["item", "value"], [[k, json.dumps(v) if not isinstance(v, str) else v] for k, v in w.items()])
    doc.heading("Results")
    doc.table(list(COLUMNS), [table_cells(r) for r in res["rows"]])
    doc.table(["Bundle", "lowering", "threads", "acc @ threshold", "AUC per set", "load s"], [
        [r["bundle"], str(r.get("lowering")), str(r.get("threads")), str((r.get("accuracy") or {}).get("acc")),
         json.dumps(r.get("auc_frame_by_set")), str(r.get("load_s"))] for r in res["rows"]
    ])  # fmt: skip
    doc.para(
        "ms/face b1: median (p90, p99) batch-1 latency after warm-up with the target's threads (0 = all cores); "
        "faces/s b8: batch-8 throughput; peak RSS (VmHWM) of the fresh process that ran the bundle. "
        "AUC frame: all face crops of both sets pooled (per set in the second table). " + run_facts(res)
    )
    doc.heading("Plots")
    images: dict[str, bytes] = {}
    add_plots(doc, merged_rows([res]), images)
    doc.write(out, "results", images)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp", type=Path, help="full-precision checkpoint (default: the default bundle's)")
    ap.add_argument("--bit", type=Path, help="BitLinear checkpoint (default: the default bundle's twin)")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per batch size and round")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds, bundles in turn (edgedf bench --rounds)")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--render-only", action="store_true", help="rebuild results.md/html from results.json")
    args = ap.parse_args()
    if args.render_only:
        render(json.loads((args.out / "results.json").read_text()), args.out)
        return 0
    from edgedf.devices.bench import BenchOptions, bench, markdown_table
    from edgedf.export.api import ExportOptions, export_bundle
    from edgedf.runtime.errors import EdgedfError

    missing = [str(d) for d in EVAL_SETS if not d.is_dir()]
    if missing:
        print(f"missing evaluation data: {', '.join(missing)}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="edgedf-devbench-"))
    try:
        check: dict = {}
        manifest = json.loads((DEFAULT / "manifest.json").read_text())
        fp, bit = args.fp, args.bit
        if manifest["model"].get("trained"):
            ck = Path(manifest["model"].get("checkpoint", ""))
            ck = ck if ck.is_absolute() else ROOT / ck
            if bit is None and (ck / "model.safetensors").is_file():
                if sha256_file(ck / "model.safetensors") != manifest["model"].get("checkpoint_sha256"):
                    print(f"{ck} is not the checkpoint the default bundle was made from", file=sys.stderr)
                    return 2
                bit = ck
                check["bit_checkpoint_sha256_matches_default_bundle"] = True
            if fp is None or bit is None:
                print("the default bundle is trained: give --fp (its full-precision twin) and --bit", file=sys.stderr)
                return 2
        elif fp is None or bit is None:
            fp0, bit0, check = default_checkpoints(work)
            fp, bit = fp or fp0, bit or bit0
        bundles = [DEFAULT]
        refused: list[str] = []
        for target, precision in EXPORTS:
            ck = bit if precision == "ternary" else fp
            print(f"export {target} {precision}", flush=True)
            opts = ExportOptions(
                target=target, precision=precision, out=work / f"{target}_{precision}",
                data=CALIB if CALIB.is_dir() else None, verify_n=256, calib_n=256,
            )  # fmt: skip
            try:
                out, _ = export_bundle(ck, opts)
            except EdgedfError as e:  # the export gate refused it: keep it with its parity, the bench shows ❎
                if "verification failed" not in str(e):
                    raise
                print(f"  {e}; kept with its measured parity", flush=True)
                refused.append(f"{target} {precision}: {e}")
                opts.min_agreement = 0.0
                out, _ = export_bundle(ck, opts)
            bundles.append(out)
        bench_opts = BenchOptions(data=EVAL_SETS, runs=args.runs, rounds=args.rounds)
        res = bench(bundles, bench_opts, say=lambda m: print(m, flush=True))
        res["what"] = {
            "default_bundle": str(DEFAULT.relative_to(ROOT)),
            "default_bundle_model": DEFAULT_DESC(),
            "fp_checkpoint": str(fp) if str(work) not in str(fp) else "make_default_bundle.py's (random init)",
            "bit_checkpoint": str(bit) if str(work) not in str(bit) else "its BitLinear twin (random init)",
            "calibration": str(CALIB.relative_to(ROOT.parent)) if CALIB.is_dir() else "random",
            "eval_sets": [str(d.relative_to(ROOT.parent)) for d in EVAL_SETS],
            "export_gate_refused": refused,
            **check,
        }
        for r in res["rows"]:  # paths in a temp dir mean nothing once it is gone
            b = Path(r["bundle"])
            r["bundle"] = b.name if str(work) in str(b) else str(b.relative_to(ROOT))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
        with open(args.out / "bench.log.jsonl", "a") as fh:
            fh.write(json.dumps(res, separators=(",", ":")) + "\n")
        render(res, args.out)
        print(markdown_table(res["rows"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
