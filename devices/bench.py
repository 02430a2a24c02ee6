"""`edgedf bench`: latency, memory, size and accuracy of bundles on this machine, one row per bundle.

Each bundle runs in a child process (devices/worker.py) with its target profile's threads; the parent
checks the bundle, prepares the labelled crops once per preprocessing spec, and decides the status:

    ✅ pass  runs here, its parity holds and its AUC is at or above --floor (when given)
    ❎ fail  runs here, but fails parity or the AUC floor
    ❌ error does not run here (backend missing, bundle unreadable, backend error), with the reason

Parity, from two sources, both must hold (decisive agreement >= 0.99, as the export gate):
  1. recorded: the manifest's parity against PyTorch, for the backend that runs the bundle here (a
     TensorRT bundle's is recorded on ONNX Runtime/OpenVINO as a proxy). Missing (exported with
     --no-verify) counts as failing: nothing vouches for the bundle's numbers.
  2. on-device, for every bundle: the backend runs here on the reference crops the bundle carries, against
     the PyTorch logits stored with them; no decision may flip that did not flip on the export machine,
     and |dp| may exceed the export machine's by at most 0.02 (runtime/parity.py). The device's own
     kernels are checked (a Pi's MatMulNBits, a Jetson's engine), not only the export machine's.
     Bundles from before reference crops: when the model is ONNX and runs on another backend than ONNX
     Runtime, ONNX Runtime on the same ONNX is the reference, on the labelled crops (or random inputs).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgedf.runtime.backends import available, backend_module
from edgedf.runtime.bundle import Bundle, load_bundle
from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.fsutil import atomic_write_bytes, atomic_write_json
from edgedf.runtime.parity import STORED, reference_holds

from .auc import roc_auc
from .data import FaceCrops, LabelledItem, face_crops, list_labelled
from .profiles import get_profile
from .worker import latency_stats

PASS, FAIL, ERROR = "✅", "❎", "❌"
MIN_AGREEMENT = 0.99
COLUMNS = (
    "Target",
    "Backend",
    "Precision",
    "Status",
    "Size (MB)",
    "AUC frame",
    "AUC video",
    "ms/face b1",
    "faces/s b8",
    "peak RSS (MB)",
)


def columns(batches: list[int] | tuple[int, ...] = (1, 8)) -> list[str]:
    """COLUMNS with the batch sizes actually timed: latency at the smallest, throughput at the largest."""
    small, big = min(batches), max(batches)
    return [c.replace("b1", f"b{small}").replace("b8", f"b{big}") for c in COLUMNS]


def run_facts(result: dict[str, Any]) -> str:
    """What every table's figures rest on: runs, warm-up, threads, load, CPU flags, backend versions."""
    o, h = result["options"], result["host"]
    threads = o["threads"] if o.get("threads") else "each target's own"
    versions = ", ".join(f"{k} {v}" for k, v in (h.get("backends") or {}).items() if v) or "-"
    rounds = o.get("rounds", 1)
    total = o["runs"] * rounds
    p99 = " (p99 of so few runs is close to their maximum)" if total < 100 else ""
    how = (
        f"{total} timed runs per batch size in {rounds} rounds (each a fresh process per bundle, bundles in turn, "
        f"{o['warmup']} warm-up each){p99}"
        if rounds > 1
        else f"{o['runs']} timed runs per batch size after {o['warmup']} warm-up{p99}"
    )
    return (
        f"{how}; threads: {threads}; "
        f"load average (1 min) {h.get('loadavg_1m')}; CPU {h['cpu']}, {h['cores']} cores, flags "
        f"{' '.join(h.get('cpu_flags') or []) or '-'}; backends: {versions}."
    )


@dataclass
class BenchOptions:
    data: list[Path] = field(default_factory=list)
    target: str | None = None  # bench under this profile (threads, backend); default: the bundle's own
    batches: tuple[int, ...] = (1, 8)
    runs: int = 50
    warmup: int = 10
    floor: float | None = None  # AUC floor (frame AUC; video AUC where there are only videos)
    threads: int | None = None  # override the profile's threads
    min_agreement: float = MIN_AGREEMENT
    timeout_s: float = 1800.0  # per bundle
    rounds: int = 1  # timing rounds: every bundle in a fresh process per round, bundles in turn


SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm")  # int8 speed


def cpu_info() -> tuple[str, list[str]]:
    """The CPU's name and which of SIMD_FLAGS it has (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")) and cpu == (platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return cpu, [f for f in SIMD_FLAGS if f in flags]


def host_info() -> dict[str, Any]:
    """The machine a figure was measured on: CPU, cores, the SIMD flags int8 speed depends on (VNNI or not
    changes it a lot), backend versions, load."""
    cpu, flags = cpu_info()
    versions = {}
    for name, mod in (("ort", "onnxruntime"), ("openvino", "openvino"), ("tensorrt", "tensorrt")):
        try:
            versions[name] = __import__(mod).__version__ if available(name) else None
        except Exception:
            versions[name] = None
    import edgedf

    return {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "edgedf": getattr(edgedf, "__version__", None),
        "backends": versions,
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def parity_verdict(
    manifest: dict[str, Any], backend: str, on_device: dict | None, min_agreement: float = MIN_AGREEMENT
) -> tuple[bool, str | None, dict | None]:
    """(passes, reason if not, the recorded entry used). See the module docstring."""
    parity = manifest.get("parity") or {}
    recorded_all = parity.get("backends") or {}
    recorded = recorded_all.get(backend)
    if recorded is None and backend == "tensorrt":  # proxies recorded on the export machine
        ran = [v for v in recorded_all.values() if v.get("status") == "ok"]
        recorded = min(ran, key=lambda v: 1.0 if _agree(v) is None else _agree(v)) if ran else None
    if not recorded or recorded.get("status") != "ok":
        return False, f"no parity recorded for {backend} (the bundle was not verified at export)", recorded
    a = _agree(recorded)
    if a is not None and a < min_agreement:
        why = f"parity: {backend} agrees with PyTorch on {a:.1%} of decisive crops (< {min_agreement:.0%})"
        return False, why, recorded
    if on_device is not None and on_device.get("reference") == STORED:
        ok, why = reference_holds(on_device, recorded.get("reference_crops"))
        if not ok:
            return False, f"on-device parity: {backend} here: {why}", recorded
    elif on_device is not None:
        b = _agree(on_device)
        if b is not None and b < min_agreement:
            why = f"on-device parity: {backend} agrees with ONNX Runtime on {b:.1%} (< {min_agreement:.0%})"
            return False, why, recorded
    return True, None, recorded


def _agree(r: dict) -> float | None:
    # As the export gate: only decisive crops count (p(fake) beyond 0.01 of the threshold); with none,
    # there is nothing to judge (every crop a coin flip, e.g. an untrained model) and the check passes.
    return r.get("decisive_agreement")


def bundle_size_mb(b: Bundle) -> float:
    return round(b.model_bytes / 1e6, 3)


class _DataCache:
    """Labelled items per data folder and aligned crops per (folder, spec), made once per bench call."""

    def __init__(self, data: list[Path], work: Path, threads: int):
        self.items: list[LabelledItem] = []
        self.set_of: dict[str, str] = {}  # item path -> the data folder's name (per-set AUC)
        names = [Path(d).name for d in data]
        for d, name in zip(data, names, strict=True):
            name = name if names.count(name) == 1 else str(d)
            for it in list_labelled(d):
                self.items.append(it)
                self.set_of[str(it.path)] = name
        self.work, self.threads = work, threads
        self._crops: dict[str, tuple[FaceCrops, Path]] = {}

    def crops(self, bundle: Bundle) -> tuple[FaceCrops, Path | None]:
        key = bundle.spec.to_json()
        if key not in self._crops:
            fc = face_crops(self.items, bundle.spec, self.threads)
            path = self.work / f"crops{len(self._crops)}.npy"
            np.save(path, fc.crops)
            self._crops[key] = (fc, path)
        fc, path = self._crops[key]
        return fc, (path if len(fc.crops) else None)

    @property
    def videos(self) -> list[tuple[str, int]]:
        return [(str(it.path), it.label) for it in self.items if it.kind == "video"]


def bench(bundles: list[Path], opts: BenchOptions, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = say or (lambda m: None)
    if opts.floor is not None and not opts.data:
        raise EdgedfError("--floor needs --data: a labelled folder to measure AUC on")
    if opts.floor is not None and not 0 <= opts.floor <= 1:
        raise EdgedfError(f"--floor is an AUC in [0, 1], got {opts.floor}")
    if not opts.batches or min(opts.batches) < 1:
        raise EdgedfError(f"--batch needs positive batch sizes, got {opts.batches}")
    if opts.runs < 1:
        raise EdgedfError(f"--runs must be >= 1, got {opts.runs}")
    if opts.rounds < 1:
        raise EdgedfError(f"--rounds must be >= 1, got {opts.rounds}")
    profile_override = get_profile(opts.target) if opts.target else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgedf-bench-") as work_s:
        work = Path(work_s)
        cache = _DataCache(opts.data, work, opts.threads or 0) if opts.data else None
        for i, path in enumerate(bundles):
            say(f"[{i + 1}/{len(bundles)}] {path}")
            rows.append(bench_one(Path(path), opts, profile_override, cache, work))
        # Further rounds time the bundles again, in turn, each in a fresh process: drift of a shared machine
        # (noisy neighbours, thermal) then falls on every bundle alike instead of on whichever ran at the time.
        for r in range(2, opts.rounds + 1):
            for i, row in enumerate(rows):
                if "latency" not in row:
                    continue
                say(f"[round {r}/{opts.rounds}, {i + 1}/{len(rows)}] {row['bundle']}")
                res = _run_worker(_job(row["bundle"], row["backend"], row["threads"], opts, None, [], work), opts)
                if isinstance(res, str):
                    row.update(status="error", icon=ERROR, reason=f"round {r}: {res}")
                    continue
                _merge_latency(row["latency"], res["latency"])
                row["peak_rss_mb"] = max(row["peak_rss_mb"], res["peak_rss_mb"])
                _latency_fields(row, opts)
    result = {
        "kind": "edgedf-bench",
        "version": 1,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": host_info(),
        "options": {
            "data": [str(d) for d in opts.data],
            "target": opts.target,
            "batches": list(opts.batches),
            "runs": opts.runs,
            "warmup": opts.warmup,
            "floor": opts.floor,
            "threads": opts.threads,
            "min_agreement": opts.min_agreement,
            "rounds": opts.rounds,
        },
        "rows": rows,
    }
    if cache is not None:
        result["data"] = {
            "images": sum(it.kind == "image" for it in cache.items),
            "videos": len(cache.videos),
        }
    return result


def bench_one(path: Path, opts: BenchOptions, profile_override, cache: _DataCache | None, work: Path) -> dict:
    row: dict[str, Any] = {"bundle": str(path)}
    try:
        b = load_bundle(path)
    except EdgedfError as e:
        return {**row, "target": opts.target or "?", "backend": "?", "precision": "?", "status": "error",
                "icon": ERROR, "reason": str(e)}  # fmt: skip
    m = b.manifest
    profile = profile_override or _profile_or_none(m.get("target"))
    backend = profile.backend if profile_override else b.backend
    threads = opts.threads if opts.threads is not None else (profile.threads if profile else int(m.get("threads", 0)))
    row.update(
        target=profile.name if profile else m.get("target"),
        device=profile.device if profile else None,
        backend=backend,
        precision=m["precision"],
        model=b.describe(),
        variant=m["model"].get("variant"),
        trained=m["model"].get("trained", (m["model"].get("meta") or {}).get("trained")),
        lowering=m.get("lowering"),
        threads=threads,
        size_mb=bundle_size_mb(b),
    )
    try:
        backend_module(backend)
    except EdgedfError as e:
        return {**row, "status": "error", "icon": ERROR, "reason": str(e)}
    if not available(backend):
        return {**row, "status": "error", "icon": ERROR, "reason": f"{_lib(backend)} not installed"}

    crops = cache.crops(b) if cache is not None else (None, None)
    fc, crops_path = crops
    videos = cache.videos if cache is not None else []
    res = _run_worker(_job(str(b.path), backend, threads, opts, crops_path, videos, work), opts)
    if isinstance(res, str):
        return {**row, "status": "error", "icon": ERROR, "reason": res}

    row["latency"] = res["latency"]
    row["load_s"] = res.get("load_s")
    row["peak_rss_mb"] = res["peak_rss_mb"]
    _latency_fields(row, opts)

    # accuracy: still-image crops and video crops at frame level; per-video mean p(fake) at video level
    labels: list[int] = []
    scores: list[float] = []
    if fc is not None and res.get("crop_p_fake"):
        labels += [int(v) for v in fc.labels]
        scores += res["crop_p_fake"]
    vid_labels, vid_scores = [], []
    for v in res.get("videos", []):
        if v.get("crop_p_fake"):
            labels += [v["label"]] * len(v["crop_p_fake"])
            scores += v["crop_p_fake"]
        if v.get("p_fake_mean") is not None:
            vid_labels.append(v["label"])
            vid_scores.append(v["p_fake_mean"])
    row["auc_frame"] = _r(roc_auc(labels, scores)) if labels else None
    if cache is not None and len({*cache.set_of.values()}) > 1:  # several data folders: AUC of each too
        sets = [cache.set_of[n] for n in fc.names] if fc is not None and res.get("crop_p_fake") else []
        for v in res.get("videos", []):
            sets += [cache.set_of[v["path"]]] * len(v.get("crop_p_fake") or [])
        by_set = {}
        for name in sorted(set(sets)):
            idx = [i for i, n in enumerate(sets) if n == name]
            by_set[name] = _r(roc_auc([labels[i] for i in idx], [scores[i] for i in idx]))
        row["auc_frame_by_set"] = by_set
    row["auc_video"] = _r(roc_auc(vid_labels, vid_scores)) if vid_labels else None
    if cache is not None:
        t = b.threshold
        row["accuracy"] = {
            "crops": len(scores),
            "fake_crops": int(sum(labels)),
            "acc": _r(float(np.mean((np.asarray(scores) >= t) == np.asarray(labels, bool)))) if scores else None,
            "threshold": t,
            "videos": len(vid_labels),
            "no_face_images": len(fc.no_face) if fc else 0,
            "unreadable": (fc.unreadable if fc else []) + [v["path"] for v in res.get("videos", []) if v.get("error")],
        }
    if "stages_s" in res:
        row["stages_s"] = res["stages_s"]
        row["frames_analysed"] = res.get("frames_analysed")

    ok, why, recorded = parity_verdict(m, backend, res.get("on_device_parity"), opts.min_agreement)
    row["parity"] = {"recorded": recorded, "on_device": res.get("on_device_parity"), "passes": ok}
    reasons = [] if ok else [why]
    if opts.floor is not None:
        auc = row["auc_frame"] if row["auc_frame"] is not None else row["auc_video"]
        row["floor_ok"] = auc is not None and auc >= opts.floor
        if not row["floor_ok"]:
            reasons.append(f"AUC {'n/a' if auc is None else f'{auc:.4f}'} below floor {opts.floor:.4f}")
    row["status"], row["icon"] = ("pass", PASS) if not reasons else ("fail", FAIL)
    row["reason"] = "; ".join(reasons) or None
    return row


def _job(bundle: str, backend: str, threads: int, opts: BenchOptions, crops: Path | None, videos, work: Path):
    return {
        "bundle": bundle,
        "backend": backend,
        "threads": threads,
        "batches": list(opts.batches),
        "runs": opts.runs,
        "warmup": opts.warmup,
        "crops": str(crops) if crops else None,
        "videos": videos,
        "result": str(work / f"result_{abs(hash(bundle))}.json"),
        "job": str(work / "job.json"),
    }


def _run_worker(job: dict[str, Any], opts: BenchOptions) -> dict[str, Any] | str:
    """The worker's result for one job in a fresh process, or why there is none."""
    atomic_write_bytes(Path(job["job"]), json.dumps(job).encode())
    Path(job["result"]).unlink(missing_ok=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgedf.devices.worker", job["job"]],
            capture_output=True, text=True, timeout=opts.timeout_s,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"timed out after {opts.timeout_s:.0f} s"
    if not Path(job["result"]).is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()
        return f"worker died: {tail[-1] if tail else f'exit code {proc.returncode}'}"
    res = json.loads(Path(job["result"]).read_text())
    return res if res.get("ok") else str(res.get("error"))


def _merge_latency(into: dict[str, Any], more: dict[str, Any]) -> None:
    """Pool another round's samples per batch size and recompute the statistics over all of them."""
    for b, lat in into.items():
        lat.update(latency_stats(lat["samples_ms"] + more[b]["samples_ms"], int(b), lat["warmup"]))


def _latency_fields(row: dict[str, Any], opts: BenchOptions) -> None:
    """Latency at the smallest batch timed, throughput at the largest (the columns say which: columns())."""
    lat1, lat8 = row["latency"].get(str(min(opts.batches))), row["latency"].get(str(max(opts.batches)))
    row["ms_b1"] = lat1["median_ms"] if lat1 else None
    row["ms_b1_p90"] = lat1["p90_ms"] if lat1 else None
    row["ms_b1_p99"] = lat1["p99_ms"] if lat1 else None
    row["faces_s_b8"] = lat8["faces_per_s"] if lat8 else None


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def _lib(backend: str) -> str:
    return {"ort": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}[backend]


def _profile_or_none(name):
    try:
        return get_profile(name)
    except EdgedfError:
        return None


def below_floor(result: dict[str, Any]) -> list[dict]:
    return [r for r in result["rows"] if r.get("floor_ok") is False]


def batch_note(batches: list[int] | tuple[int, ...] = (1, 8)) -> str:
    small, big = min(batches), max(batches)
    return (
        f"ms/face b{small}: median (p90, p99) of batch-{small} latency per face after warm-up; faces/s b{big}: "
        f"batch-{big} throughput; peak RSS of the process that ran the bundle."
    )


def failed_rows(result: dict[str, Any]) -> list[dict]:
    """Rows that did not pass here (parity, floor, or not running at all): what `--strict` fails on."""
    return [r for r in result["rows"] if r.get("status") != "pass"]


def status_cell(row: dict[str, Any]) -> str:
    """The icon and the word (a page without an emoji font, a screen reader and grep still get the status),
    then the reason."""
    return f"{row['icon']} {row['status']}" + (f": {row['reason']}" if row.get("reason") else "")


def table_cells(row: dict[str, Any]) -> list[str]:
    """One row of the bench table, as strings (Rich and Markdown print the same cells)."""

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    return [
        str(row.get("target")),
        str(row.get("backend")),
        str(row.get("precision")),
        status_cell(row),
        f(row.get("size_mb"), ".2f"),
        f(row.get("auc_frame"), ".4f"),
        f(row.get("auc_video"), ".4f"),
        _latency_cell(row),
        f(row.get("faces_s_b8"), ".1f"),
        f(row.get("peak_rss_mb"), ".0f"),
    ]


def _latency_cell(row: dict[str, Any]) -> str:
    if row.get("ms_b1") is None:
        return "-"
    return f"{row['ms_b1']:.2f} (p90 {row['ms_b1_p90']:.2f}, p99 {row['ms_b1_p99']:.2f})"


def markdown_table(rows: list[dict[str, Any]], batches: list[int] | tuple[int, ...] = (1, 8)) -> str:
    cols = columns(batches)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in table_cells(r)) + " |")
    return "\n".join(lines) + "\n"


def write_results(result: dict[str, Any], out: Path) -> tuple[Path, Path, Path]:
    """bench-<time>.json and bench.md (this call) in `out`, plus one line appended to bench.log.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = result["time"].replace(":", "").replace("-", "").replace("+0000", "Z")
    jpath = out / f"bench-{stamp}.json"
    n = 1
    while jpath.exists():
        n += 1
        jpath = out / f"bench-{stamp}-{n}.json"
    atomic_write_json(jpath, result)
    md = out / "bench.md"
    h = result["host"]
    atomic_write_bytes(
        md,
        (
            f"# edgedf bench · {h['cpu']} · {h['cores']} cores · {result['time']}\n\n"
            + markdown_table(result["rows"], result["options"]["batches"])
            + f"\n{batch_note(result['options']['batches'])} {run_facts(result)}\n"
        ).encode(),
    )
    log = out / "bench.log.jsonl"
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(result, separators=(",", ":")) + "\n")
    return jpath, md, log
