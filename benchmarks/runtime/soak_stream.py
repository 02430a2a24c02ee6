"""Soak: `edgedf run` on a live camera stream for minutes, memory sampled, then stopped with SIGINT.

    python benchmarks/runtime/soak_stream.py [--minutes 5] [--fps 25]

The camera is a real HTTP server on loopback serving MJPEG (multipart/x-mixed-replace, as IP cameras do),
640x360 at `--fps`, a real face (skimage's astronaut) moving across the frame, forever. `edgedf run URL
--jsonl LOG --json REPORT` runs with the built-in bundle and default settings (5 analysed frames per
second; the report keeps the latest 1,000 frame records of a live source). RSS of the edgedf process is
read from /proc every 5 s. After `--minutes`, SIGINT: the run must write its report (the stream judged on
what was seen, status partial) and exit 130. Checked: memory flat (the last third's mean within 10 MB of
the second third's), events flushed while running, report written. Results: soak.json and soak.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests" / "runtime"))


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--fps", type=float, default=25.0)
    args = ap.parse_args()

    from runtime_media import MjpegServer, face_frames

    from edgedf.devices.bench import host_info

    cam = MjpegServer([("forever",)], frames=face_frames(250), fps=args.fps)
    tmp = Path(tempfile.mkdtemp())
    log, rep = tmp / "events.jsonl", tmp / "report.json"
    cmd = [sys.executable, "-m", "edgedf", "run", cam.url, "--jsonl", str(log), "--json", str(rep)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples, t0 = [], time.time()
    try:
        while time.time() - t0 < args.minutes * 60 and p.poll() is None:
            time.sleep(5)
            r = rss_mb(p.pid)
            if r is not None:
                lines = log.read_text().count("\n") if log.exists() else 0
                samples.append({"t_s": round(time.time() - t0, 1), "rss_mb": round(r, 1), "log_lines": lines})
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        cam.close()
    report = json.loads(rep.read_text()) if rep.exists() else None
    n = len(samples)
    mid = [s["rss_mb"] for s in samples[n // 3 : 2 * n // 3]]
    last = [s["rss_mb"] for s in samples[2 * n // 3 :]]
    src = report["sources"][0] if report else {}
    result = {
        "host": host_info(),
        "minutes": args.minutes,
        "camera": f"MJPEG over HTTP on loopback, 640x360 at {args.fps:g} fps",
        "exit_code": p.returncode,
        "samples": samples,
        "peak_rss_mb": max(s["rss_mb"] for s in samples),
        "rss_mid_third_mb": round(statistics.mean(mid), 1) if mid else None,
        "rss_last_third_mb": round(statistics.mean(last), 1) if last else None,
        "events_while_running": samples[-1]["log_lines"] if samples else 0,
        "report_written": report is not None,
        "status": src.get("status"),
        "frames_analysed": (src.get("sampling") or {}).get("frames_analysed"),
        "frames_in_report": len(src.get("frames") or []),
        "verdict": (src.get("video") or {}).get("verdict"),
        "warnings": src.get("warnings"),
        "stderr_tail": err[-500:],
    }
    flat = bool(mid and last and abs(result["rss_last_third_mb"] - result["rss_mid_third_mb"]) <= 10)
    result["flat"] = flat
    (HERE / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    h = result["host"]
    md = [
        "# Soak: a live stream for minutes",
        "",
        f"`python benchmarks/runtime/soak_stream.py --minutes {args.minutes:g}`: {result['camera']}, built-in "
        f"bundle, default settings, `--jsonl` and `--json`; stopped with SIGINT. Machine: {h['cpu']}, "
        f"{h['cores']} cores, flags {' '.join(h['cpu_flags'])}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| run | {args.minutes:g} min, {result['frames_analysed']} frames analysed |",
        f"| RSS: peak / mean of middle third / mean of last third | {result['peak_rss_mb']:.0f} / "
        f"{result['rss_mid_third_mb']} / {result['rss_last_third_mb']} MB |",
        f"| memory flat (last third within 10 MB of the middle third) | {'yes' if flat else 'NO'} |",
        f"| JSON Lines written while running (run line, verdict events) | {result['events_while_running']} |",
        f"| after SIGINT: exit code, report, status | {p.returncode}, "
        f"{'written' if report else 'MISSING'}, {result['status']} |",
        f"| frame records kept in the report (latest only) | {result['frames_in_report']} |",
        f"| verdict | {result['verdict']} |",
        "",
        "RSS over time (MB): " + ", ".join(f"{s['t_s']:.0f}s {s['rss_mb']:.0f}" for s in samples[:: max(1, n // 12)]),
    ]
    (HERE / "soak.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if not (flat and report and p.returncode == 130):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
