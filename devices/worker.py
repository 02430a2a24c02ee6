"""One bundle, measured in its own process: `python -m edgedf.devices.worker JOB.json`.

A fresh process per bundle keeps bundles from polluting each other's memory figures (a process's
peak RSS never goes down) and contains a backend that crashes. The bench (devices/bench.py) writes
the job, this module writes the result JSON the job names.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgedf.runtime.backends import BackendOptions, available, open_classifier, open_session, run_batched
from edgedf.runtime.bundle import load_bundle
from edgedf.runtime.fsutil import atomic_write_json
from edgedf.runtime.parity import compare, reference_check

CHECK_CROPS = 256


def peak_rss_mb() -> float:
    """This process's peak resident set size. Linux: VmHWM, the high-water mark of this process's own
    memory map. Not ru_maxrss, which execve carries over from the parent at fork time (a bench parent
    holding 800 MB of crops would make every bundle look 800 MB big)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0  # bytes on macOS, KiB elsewhere


def agreement(ref: np.ndarray, out: np.ndarray, fake_index: int, threshold: float) -> dict[str, Any]:
    return {"status": "ok", **compare(ref, out, fake_index, threshold)}


def latency(clf, shape: tuple[int, ...], batches: list[int], runs: int, warmup: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for b in batches:
        x = rng.standard_normal((b, *shape)).astype(np.float32)
        for _ in range(warmup):
            clf.infer(x)
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            clf.infer(x)
            ts.append(time.perf_counter() - t0)
        out[str(b)] = latency_stats([t * 1e3 for t in ts], b, warmup)
    return out


def latency_stats(samples_ms: list[float], batch: int, warmup: int) -> dict[str, Any]:
    """Median, p90, p99 and throughput of timed runs at one batch size (the samples kept: rounds pool them)."""
    ms = np.asarray(samples_ms)
    med = float(np.median(ms))
    return {
        "median_ms": round(med, 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "ms_per_face": round(med / batch, 4),
        "faces_per_s": round(1e3 * batch / med, 2) if med > 0 else None,
        "runs": len(ms),
        "warmup": warmup,
        "samples_ms": [round(float(v), 4) for v in ms],
    }


def reference_model(bundle, backend: str):
    """ONNX Runtime on the bundle's ONNX as the on-device reference for another backend, or None."""
    if backend == "ort" or bundle.entry.suffix != ".onnx" or not available("ort"):
        return None
    model: Any = bundle.entry
    if bundle.backend == "tensorrt":
        from edgedf.runtime.ternary import expand_packed_ternary

        model = expand_packed_ternary(bundle.entry.read_bytes())
    return model


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    bundle = load_bundle(job["bundle"], verify=False)  # the parent checked the hashes
    backend, threads = job["backend"], int(job["threads"])
    t0 = time.perf_counter()
    clf = open_classifier(bundle, backend, BackendOptions(threads=threads))
    load_s = time.perf_counter() - t0
    s = bundle.spec.input_size
    res: dict[str, Any] = {"load_s": round(load_s, 3)}
    res["latency"] = latency(clf, (3, s, s), job["batches"], job["runs"], job["warmup"])
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)  # load + warm-up + timed runs, before any data is touched

    crops = np.load(job["crops"], mmap_mode="r") if job.get("crops") else None
    logits = []
    if crops is not None and len(crops):
        for i in range(0, len(crops), 32):
            logits.append(clf.infer(bundle.spec.to_input(np.asarray(crops[i : i + 32]), "BGR")))
        logits = np.concatenate(logits)
        res["crop_p_fake"] = [round(float(v), 6) for v in bundle.p_fake(logits)]

    res["on_device_parity"] = reference_check(bundle, clf.infer)  # the bundle's own reference crops
    ref_model = reference_model(bundle, backend) if res["on_device_parity"] is None else None
    if ref_model is not None:  # a bundle without reference crops: ONNX Runtime on its ONNX is the reference
        if crops is not None and len(crops):
            x = bundle.spec.to_input(np.asarray(crops[:CHECK_CROPS]), "BGR")
            out = logits[:CHECK_CROPS]
            source = "data"
        else:
            x = np.random.default_rng(1).standard_normal((64, 3, s, s)).astype(np.float32)
            out = clf.infer(x)
            source = "random"
        sess = open_session(ref_model, "ort", BackendOptions(threads=threads))
        ref = run_batched(sess, x, bundle.manifest.get("input", {}).get("batch"), 32)
        check = agreement(ref, out, bundle.fake_index, bundle.threshold)
        res["on_device_parity"] = {**check, "reference": "onnxruntime on the bundle's ONNX", "source": source}

    if job.get("videos"):
        from edgedf.runtime.pipeline import STAGES, Pipeline, RunOptions

        pipe = Pipeline(bundle, backend, threads=threads, options=RunOptions())
        stages = dict.fromkeys([*STAGES, "total"], 0.0)
        videos = []
        for path, label in job["videos"]:
            try:
                sec = pipe.run_source(path)
            except Exception as e:  # one bad video is reported, the rest still run
                videos.append({"path": path, "label": label, "error": str(e).splitlines()[0]})
                continue
            ps = [f["p_fake"] for fr in sec["frames"] for f in fr["faces"] if f.get("p_fake") is not None]
            for k, v in (sec["timings_s"] or {}).items():
                stages[k] = stages.get(k, 0.0) + v
            videos.append(
                {
                    "path": path,
                    "label": label,
                    "crop_p_fake": [round(float(v), 6) for v in ps],
                    "p_fake_mean": float(np.mean(ps)) if ps else None,
                    "frames_analysed": sec["sampling"]["frames_analysed"],
                }
            )
        res["videos"] = videos
        res["stages_s"] = {k: round(v, 4) for k, v in stages.items()}
        res["frames_analysed"] = sum(v.get("frames_analysed", 0) for v in videos)
    return res


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text())
    try:
        res = {"ok": True, **run_job(job)}
    except Exception as e:
        res = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    atomic_write_json(job["result"], res)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
