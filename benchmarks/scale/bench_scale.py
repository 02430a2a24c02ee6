"""Throughput of `edgedf run` over many clips: one process vs `--workers N` vs Ray, on this machine.

    python benchmarks/scale/bench_scale.py [--clips 16] [--seconds 6] [--reps 3] [--workers 2]

Clips: the first `--seconds` of each real video in ../shared/data/videos/real (cycled to `--clips`),
re-encoded as H.264 at their own size; without that folder, generated astronaut clips (720p). Each mode runs
the whole CLI in its own process (`--no-frames --json`, default bundle, default sampling 5 fps), modes
interleaved `--reps` times; the figure is the median wall time of the whole process (start, model loading
and, for Ray, starting a local instance included). For one process and the pool, the CPU time of the
process tree over its wall time says how many of the cores it kept busy.

Also measured: the per-source overhead of each mode on empty work (sources that fail as soon as a worker
opens them, so no decoding or inference) from the slope of wall time over 20 vs 1020 such sources, and each
stage's share of a one-process run (the pipeline's own timers), which the capacity model in docs/scale-out.md rests on.
Results: results.json and results.md beside this script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED_VIDEOS = ROOT.parent / "shared" / "data" / "videos" / "real"
sys.path.insert(0, str(ROOT / "tests" / "runtime"))


def make_clips(out: Path, n: int, seconds: float) -> list[Path]:
    import av
    from runtime_media import face_frames, write_h264

    out.mkdir(parents=True, exist_ok=True)
    videos = sorted(SHARED_VIDEOS.glob("*.mp4")) if SHARED_VIDEOS.is_dir() else []
    clips = []
    for i in range(n):
        path = out / f"clip_{i:02d}.mp4"
        clips.append(path)
        if path.exists():
            continue
        if not videos:
            write_h264(path, face_frames(int(seconds * 30), size=(1280, 720)), fps=30)
            continue
        frames, fps = [], 30
        with av.open(str(videos[i % len(videos)])) as c:
            st = c.streams.video[0]
            fps = int(round(float(st.average_rate or 30)))
            for f in c.decode(st):
                frames.append(f.to_ndarray(format="bgr24"))
                if len(frames) >= seconds * fps:
                    break
        h, w = frames[0].shape[:2]
        frames = [f[: h - h % 2, : w - w % 2] for f in frames]  # libx264 4:2:0 wants even sizes
        write_h264(path, frames, fps=fps)
    return clips


def run_cli(args: list[str]) -> dict:
    """The CLI in a child process: wall time, and CPU time of its process tree (pool workers included;
    Ray's workers belong to the raylet, not to this tree, so it is not given for Ray)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "edgedf", "run", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode not in (0, 1, 2, 3):
        raise SystemExit(f"edgedf run failed ({p.returncode}): {p.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "rc": p.returncode}


MODES = {
    "1 process": [],
    "--workers 2": ["--workers", "2"],
    "Ray, started by the run (--ray local)": ["--ray", "local", "--workers", "2"],
    "Ray, running cluster (ray start; --ray auto)": ["--ray", "auto", "--workers", "2"],
}


@contextlib.contextmanager
def ray_cluster(cpus: int, needed: bool):
    """A running single-node cluster, as `ray start --head` leaves one, for the --ray auto mode only (an
    idle cluster's own processes would slow the other modes down)."""
    if not needed:
        yield
        return
    ray_bin = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_bin, "start", "--head", f"--num-cpus={cpus}", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True)  # fmt: skip
    time.sleep(3)  # let it settle: the figure is for a cluster that is already up
    try:
        yield
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True)


def overhead(tmp: Path, workers: int) -> dict:
    """Per-source cost of each mode on empty work: sources that fail as soon as a worker opens them (a few
    bytes that no decoder reads). Missing or empty files would not do: the driver refuses those itself,
    before any pool or Ray starts."""
    junk = tmp / "junk"
    junk.mkdir(parents=True, exist_ok=True)
    for i in range(1020):
        (junk / f"junk_{i}.mp4").write_bytes(b"not a video " * 8)
    out = {}
    for name, extra in MODES.items():
        extra = [x if x != "2" else str(workers) for x in extra]
        walls = {}
        for n in (20, 1020):
            lst = tmp / f"empty_{n}.txt"
            lst.write_text("\n".join(str(junk / f"junk_{i}.mp4") for i in range(n)))
            with ray_cluster(workers, "auto" in extra):
                walls[n] = statistics.median(
                    run_cli(["--from-list", str(lst), "--no-frames", *extra])["wall_s"] for _ in range(2)
                )
        per = (walls[1020] - walls[20]) / 1000
        out[name] = {"per_source_ms": round(per * 1000, 2), "fixed_s": round(walls[20] - 20 * per, 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgedf-scale-clips")
    args = ap.parse_args()

    from edgedf.devices.bench import host_info

    clips = make_clips(args.cache, args.clips, args.seconds)
    lst = args.cache / "list.txt"
    lst.write_text("\n".join(map(str, clips)) + "\n")
    media_s = 0.0
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    reports: dict[str, dict] = {}
    for rep in range(args.reps):
        for i, (mode, extra) in enumerate(MODES.items()):
            extra = [x if x != "2" else str(args.workers) for x in extra]
            out = args.cache / f"report_{i}.json"
            with ray_cluster(args.workers, "auto" in extra):
                r = run_cli(["--from-list", str(lst), "--no-frames", "--json", str(out), *extra])
            runs[mode].append(r)
            reports[mode] = json.loads(out.read_text())
            print(f"rep {rep + 1} {mode}: {r['wall_s']:.1f} s", file=sys.stderr, flush=True)
    empty = overhead(args.cache, args.workers)
    base = reports["1 process"]
    media_s = sum(s["info"]["duration_s"] or 0 for s in base["sources"] if s["status"] != "error")
    same = {
        m: [s["video"].get("score") for s in r["sources"]] == [s["video"].get("score") for s in base["sources"]]
        for m, r in reports.items()
    }
    stages: dict[str, float] = {}
    for s in base["sources"]:
        for k, v in (s["timings_s"] or {}).items():
            stages[k] = stages.get(k, 0.0) + v
    rows = {}
    base_wall = statistics.median(r["wall_s"] for r in runs["1 process"])
    for mode, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        rows[mode] = {
            "wall_s": round(wall, 2),
            "walls_s": [round(r["wall_s"], 2) for r in rs],
            "clips_per_min": round(60 * len(clips) / wall, 1),
            "video_s_per_s": round(media_s / wall, 2),
            "speedup_vs_1_process": round(base_wall / wall, 2),
            "cores_busy": None if mode.startswith("Ray") else round(cpu / wall, 2),  # raylet's workers: not ours
            "same_scores_as_1_process": same[mode],
        }
    result = {
        "host": host_info(),
        "clips": len(clips),
        "clip_seconds": args.seconds,
        "clips_from": "shared/data/videos/real" if SHARED_VIDEOS.is_dir() else "generated (astronaut, 720p)",
        "media_seconds": round(media_s, 1),
        "bundle": base["model"]["bundle"].split("/")[-1],
        "sampling": base["options"]["sampling"],
        "reps": args.reps,
        "modes": rows,
        "stage_seconds_1_process": {k: round(v, 2) for k, v in stages.items()},
        "empty_work_overhead": empty,
    }
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "results.md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    h = r["host"]
    lines = [
        "# edgedf run over many clips: 1 process vs --workers vs Ray",
        "",
        f"Machine: {h['cpu']}, {h['cores']} cores, flags {' '.join(h['cpu_flags']) or '-'}; "
        f"ONNX Runtime {h['backends'].get('ort')}; load (1 min) {h['loadavg_1m']} at the end.",
        f"Clips: {r['clips']} × first {r['clip_seconds']:g} s of {r['clips_from']} ({r['media_seconds']} s of "
        f"video); built-in bundle ({r['bundle']}), default sampling {r['sampling']}; "
        f"median of {r['reps']} interleaved runs of the whole process "
        "(`python benchmarks/scale/bench_scale.py`).",
        "",
        "| mode | wall (s) | runs (s) | clips/min | video s per s | vs 1 process | cores busy | same scores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, x in r["modes"].items():
        busy = "-" if x["cores_busy"] is None else f"{x['cores_busy']:.2f}"
        lines.append(
            f"| {m} | {x['wall_s']:.1f} | {', '.join(f'{w:.1f}' for w in x['walls_s'])} | {x['clips_per_min']} | "
            f"{x['video_s_per_s']} | {x['speedup_vs_1_process']:.2f}× | {busy} | "
            f"{'yes' if x['same_scores_as_1_process'] else 'NO'} |"
        )
    total = sum(v for k, v in r["stage_seconds_1_process"].items() if k != "total")
    lines += ["", "Where one process spends its time (pipeline timers, all clips):", "",
              "| stage | s | share |", "|---|---|---|"]  # fmt: skip
    for k, v in r["stage_seconds_1_process"].items():
        if k != "total" and v > 0:
            lines.append(f"| {k} | {v:.2f} | {100 * v / total:.0f} % |")
    lines += ["", "Per-source overhead on empty work (undecodable sources; slope over 20 vs 1020 sources):",
              "", "| mode | per source (ms) | fixed (s): start, models, workers |", "|---|---|---|"]  # fmt: skip
    for m, x in r["empty_work_overhead"].items():
        lines.append(f"| {m} | {x['per_source_ms']:.1f} | {x['fixed_s']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("COLUMNS", "200")
    main()
