"""Every figure of the shipped detector's goals (issue #10), from one command.

    python benchmarks/training/evaluate_detector.py --bundle runtime/assets/default_bundle \
        --fp runs/detector_fp/model --bit runs/detector_bit/model --out benchmarks/training/detector \
        --fp-pair runs/detector_fp_pair/model

- crops: DFDC dev (crop AUC), FF++ c23 val+test ids (video AUC per method, frames pooled per video),
  StyleGAN and CIPLAB (eval only), scored by the bundle through its runtime backend, and by the fp twin
  and the BitLinear checkpoint in PyTorch, and with --fp-pair the student's own recipe with full-precision
  linears (`edgedf train configs/detector_bit.yaml model.variant=fp`: the like-for-like ternary-vs-fp pair);
- videos: `edgedf run`'s pipeline with the bundle on ../shared/data/videos/real (16 real videos, the
  verdict and its score per video) and GHOST (the real clip and its three swaps);
- the bundle's size and classifier latency per face at batch 8 on 2 threads (median of timed runs).

Writes OUT/results.json and OUT/results.md. Crops are prepared with the bundle's spec under runs/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from edgedf.runtime.fsutil import atomic_write_bytes, atomic_write_json
from edgedf.train.evaluate import DatasetScores, crops_for, open_scorer, score_crops, summarize

REPO = Path(__file__).resolve().parents[2]


def cpu_facts() -> dict:
    """CPU name and cores as `edgedf bench` reports them, plus the SIMD flags int8 speed depends on."""
    from edgedf.devices.bench import host_info

    host = host_info()
    return {"cpu": host["cpu"], "cores": host["cores"], "flags": host["cpu_flags"]}


def crop_sets(data: Path, spec, cache: Path, dfdc: Path | None, ffpp: Path | None) -> dict[str, tuple[Path, str]]:
    """name -> (crops folder, split) for the crop-level sets."""
    sets: dict[str, tuple[Path, str]] = {}
    sets["dfdc_dev"] = (dfdc or crops_for(data / "dfdc_faces", spec, "labels", cache, 1, 2)[0], "val")
    ff = ffpp or crops_for(data / "ffpp_c23_faces", spec, "labels", cache, 1, 2, splits_dir=data / "ffpp_splits")[0]
    sets["ffpp_dev"] = (ff, "val,test")
    for name in ("stylegan", "ciplab_splice"):
        sets[name] = (crops_for(data / "deepfakes" / name, spec, "folder", cache, 1, 2)[0], "")
    return sets


def score_sets(scorer, sets) -> dict:
    out = {}
    for name, (crops, split) in sets.items():
        out[name] = summarize([DatasetScores(name, score_crops(scorer, crops, split or None))])["datasets"][name]
    return out


def run_videos(bundle: Path, paths: list[Path], frames: int) -> list[dict]:
    from edgedf.runtime.bundle import load_bundle
    from edgedf.runtime.decode import Sampling
    from edgedf.runtime.pipeline import Pipeline, RunOptions

    pipe = Pipeline(load_bundle(bundle), options=RunOptions(sampling=Sampling("frames", frames), keep_frames=False))
    rows = []
    for p in paths:
        r = pipe.run_source(str(p))
        v = r["video"]
        rows.append(
            {
                "source": p.name,
                "verdict": v["verdict"],
                "score": v["score"],
                "tracks_judged": v["n_tracks_judged"],
                "tracks": v["n_tracks"],
                "faces_too_small": v["n_faces_too_small"],
                "crop_mean": v["crop_mean"],
            }
        )
    return rows


def latency(bundle: Path, batch: int = 8, threads: int = 2, runs: int = 30, warmup: int = 5) -> dict:
    """Classifier latency per face at `batch` on `threads`, timed as `edgedf bench` times it."""
    from edgedf.devices.worker import latency as bench_latency
    from edgedf.runtime.backends import BackendOptions, open_classifier
    from edgedf.runtime.bundle import load_bundle

    b = load_bundle(bundle)
    clf = open_classifier(b, None, BackendOptions(threads=threads))
    s = b.spec.input_size
    t = bench_latency(clf, (3, s, s), [batch], runs, warmup)[str(batch)]
    size = b.model_bytes
    return {"batch": batch, "threads": threads, "runs": runs, "warmup": warmup, "ms_per_face": t["ms_per_face"],
            "p90_ms_per_face": t["p90_ms"] / batch, "bundle_bytes": size,
            "load_average": os.getloadavg()[0]}  # fmt: skip


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown(res: dict) -> str:
    lines = [f"# Shipped detector: every goal figure ({res['created']})", ""]
    lines += [f"CPU: {res['host']['cpu']} ({res['host']['cores']} cores; {', '.join(res['host']['flags'])}).", ""]
    lines += [f"Command: `{res['command']}`", ""]
    lines += ["## Crops (AUC; FF++ per method at video level, frames pooled per video)", ""]
    lines += ["| set | model | frame AUC | video AUC | crops | videos |", "|---|---|---|---|---|---|"]
    for model, sets in res["crops"].items():
        for name, groups in sets.items():
            pooled = "all" if "all" in groups else next(iter(groups))  # a one-group set has no "all"
            for g, m in groups.items():
                if (name == "ffpp_dev" and m["frame_auc"] is not None) or g == pooled:
                    label = name if g == "all" else f"{name} {g.split('/')[-1]}"
                    lines.append(f"| {label} | {model} | {_f(m['frame_auc'])} | {_f(m['video_auc'])} | "
                                 f"{m['frames']} | {m['videos']} |")  # fmt: skip
    cal = res.get("threshold_calibration") or {}
    lines += ["", f"## Videos (bundle, threshold {res['threshold']:.4f}; {cal.get('method', 'uncalibrated')})", ""]
    lines += [
        "| source | verdict | score (top judged track) | tracks judged | faces too small |",
        "|---|---|---|---|---|",
    ]
    for group in ("real_videos", "ghost"):
        for r in res[group]:
            lines.append(f"| {r['source']} | {r['verdict']} | {_f(r['score'])} | {r['tracks_judged']}/{r['tracks']} "
                         f"| {r['faces_too_small']} |")  # fmt: skip
    lat = res["latency"]
    lines += ["", "## Edge budget", "",
              f"Bundle {lat['bundle_bytes'] / 1e6:.2f} MB; classifier {lat['ms_per_face']:.2f} ms per face "
              f"(p90 {lat['p90_ms_per_face']:.2f}) at batch {lat['batch']}, {lat['threads']} threads, "
              f"median of {lat['runs']} runs after {lat['warmup']} warm-up, load average {lat['load_average']:.1f}.",
              ""]  # fmt: skip
    lines += ["## Goals", "", "| figure | goal | measured |", "|---|---|---|"]
    for g in res["goals"]:
        lines.append(f"| {g['figure']} | {g['goal']} | {g['measured']} |")
    return "\n".join(lines) + "\n"


def goals(res: dict) -> list[dict]:
    b = res["crops"]["bundle"]
    fp_name = "fp, same recipe" if "fp, same recipe" in res["crops"] else "fp twin"
    fp = res["crops"].get(fp_name)
    ff = b["ffpp_dev"]
    methods = {g.split("/")[-1]: m["video_auc"] for g, m in ff.items() if g != "all" and "/" in g and m["video_auc"]}
    reals_fake = sum(r["verdict"] == "fake" for r in res["real_videos"])
    ghost = {r["source"]: r["score"] for r in res["ghost"]}
    real = ghost.get("orig.webp")
    swaps = [s for n, s in ghost.items() if n != "orig.webp"]
    above = sum(s is not None and real is not None and s > real for s in swaps)
    dfdc = _f(b["dfdc_dev"]["all"]["frame_auc"])
    per_method = ", ".join(f"{k} {v:.3f}" for k, v in sorted(methods.items()))
    out = [
        {"figure": "DFDC dev crop AUC, shipped bundle", "goal": ">= 0.90", "measured": dfdc},
        {"figure": "FF++ c23 dev video AUC per method", "goal": ">= 0.90 each", "measured": per_method},
        {
            "figure": "real videos judged fake",
            "goal": "0 of 16",
            "measured": f"{reals_fake} of {len(res['real_videos'])}",
        },
        {"figure": "GHOST swaps scored above the real clip", "goal": "3 of 3", "measured": f"{above} of {len(swaps)}"},
    ]
    if fp is not None:
        d = b["dfdc_dev"]["all"]["frame_auc"] - fp["dfdc_dev"]["all"]["frame_auc"]
        out.append({"figure": f"ternary bundle vs {fp_name}, DFDC dev AUC", "goal": "within 2 points",
                    "measured": f"{100 * d:+.2f} points"})  # fmt: skip
    lat = res["latency"]
    out.append({"figure": "bundle size / ms per face (b8, 2 threads)", "goal": "<= 6 MB / <= 10 ms",
                "measured": f"{lat['bundle_bytes'] / 1e6:.2f} MB / {lat['ms_per_face']:.2f} ms"})  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "runtime/assets/default_bundle")
    ap.add_argument("--fp", type=Path, help="full-precision twin checkpoint")
    ap.add_argument("--bit", type=Path, help="BitLinear checkpoint the bundle came from")
    ap.add_argument("--fp-pair", type=Path, help="the bundle's recipe with full-precision linears (the goal's pair)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data")
    ap.add_argument("--dfdc", type=Path, help="prepared DFDC crops (default: prepare into --cache)")
    ap.add_argument("--ffpp", type=Path, help="prepared FF++ crops (default: prepare into --cache)")
    ap.add_argument("--cache", type=Path, default=REPO / "runs/eval_crops")
    ap.add_argument("--frames", type=int, default=16, help="frames per video for the video checks")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/training/detector")
    a = ap.parse_args()

    bundle = open_scorer(a.bundle)
    sets = crop_sets(a.data, bundle.spec, a.cache, a.dfdc, a.ffpp)
    manifest = json.loads((a.bundle / "manifest.json").read_text())
    res: dict = {
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/training/evaluate_detector.py "
        + " ".join(
            f"--{k} {v}" for k, v in (("bundle", a.bundle), ("fp", a.fp), ("bit", a.bit), ("fp-pair", a.fp_pair)) if v
        ),
        "host": cpu_facts(),
        "threshold": manifest["threshold"],
        "threshold_calibration": manifest.get("threshold_calibration"),
        "verdict_policy": manifest.get("verdict_policy"),
        "crops": {"bundle": score_sets(bundle, sets)},
    }
    for name, ck in (("fp twin", a.fp), ("bit checkpoint", a.bit), ("fp, same recipe", a.fp_pair)):
        if ck:
            res["crops"][name] = score_sets(open_scorer(ck), sets)
    real = sorted((a.data / "videos" / "real").glob("*.mp4"))
    res["real_videos"] = run_videos(a.bundle, real, a.frames)
    ghost = a.data / "deepfakes" / "ghost"
    res["ghost"] = run_videos(a.bundle, [ghost / n for n in ("orig.webp", "elon.webp", "khabenskii.webp", "mark.webp")],
                              66)  # fmt: skip
    res["latency"] = latency(a.bundle)
    res["goals"] = goals(res)
    try:
        res["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                    text=True).stdout.strip()  # fmt: skip
    except OSError:
        pass
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out / "results.json", res)
    atomic_write_bytes(a.out / "results.md", markdown(res).encode())
    print(markdown(res))


if __name__ == "__main__":
    main()
