"""The run report: one versioned JSON document per `edgedf run` (schema: report_schema.json, documented in
docs/report-schema.md), a console summary, and the p(fake) timeline plot."""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import platform
from pathlib import Path
from typing import Any

from .errors import EdgedfError
from .fsutil import atomic_write_bytes, atomic_write_json

REPORT_FORMAT = "edgedf-report"
REPORT_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent / "report_schema.json"


def build_report(
    pipeline_facts: dict[str, Any], sources: list[dict[str, Any]], execution: dict[str, Any] | None = None
) -> dict[str, Any]:
    from edgedf import __version__

    verdicts: dict[str, int] = {}
    for s in sources:
        v = (s.get("video") or {}).get("verdict", "error")
        verdicts[v] = verdicts.get(v, 0) + 1
    return {
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "edgedf_version": __version__,
        "host": {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version()},
        **pipeline_facts,
        "summary": {
            "n_sources": len(sources),
            "n_ok": sum(s["status"] == "ok" for s in sources),
            "n_partial": sum(s["status"] == "partial" for s in sources),
            "n_error": sum(s["status"] == "error" for s in sources),
            "verdicts": verdicts,
        },
        "sources": sources,
        **({"execution": execution} if execution is not None else {}),
    }


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    atomic_write_json(path, report)


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def exit_code(sources: list[dict[str, Any]]) -> int:
    """0: every source judged real/fake; 1: some judged, some failed or had no face;
    2: nothing judged and at least one error; 3: nothing judged because no source had a face;
    5: every source judged, but at least one only in part (truncated or corrupt: status "partial")."""
    verdicts = [(s.get("video") or {}).get("verdict") for s in sources]
    judged = sum(v in ("real", "fake") for v in verdicts)
    if judged == len(verdicts) and judged:
        return 5 if any(s["status"] == "partial" for s in sources) else 0
    if judged:
        return 1
    return 2 if any(s["status"] == "error" for s in sources) else 3


def plot_timeline(path: str | Path, sources: list[dict[str, Any]], threshold: float) -> None:
    """PNG: p(fake) over time per track, one panel per judged source (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgedfError("--plot needs matplotlib: pip install 'edgedf[plot]'") from None
    ok = [s for s in sources if s["status"] != "error"]
    if not ok:
        raise EdgedfError("--plot: no source could be analysed, nothing to plot")
    fig, axes = plt.subplots(len(ok), 1, figsize=(9, 2.6 * len(ok)), squeeze=False)
    for ax, s in zip(axes[:, 0], ok, strict=True):
        series: dict[int, tuple[list[float], list[float]]] = {}
        for fr in s["frames"]:
            for f in fr["faces"]:
                if f["p_fake"] is not None:
                    xs, ys = series.setdefault(f["track"], ([], []))
                    xs.append(fr["t"])
                    ys.append(f["p_fake"])
        for tid, (xs, ys) in sorted(series.items()):
            ax.plot(xs, ys, marker="o" if len(xs) < 40 else None, ms=3, lw=1.2, label=f"track {tid}")
        ax.axhline(threshold, color="red", ls="--", lw=0.8, label=f"threshold {threshold:.2f}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("p(fake)")
        v = s["video"]
        ax.set_title(f"{Path(s['source']).name}: {v['verdict']}", fontsize=9)
        if not series:
            ax.text(0.5, 0.5, "no face", transform=ax.transAxes, ha="center")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


class ResultLog:
    """`edgedf run --jsonl FILE`: one JSON line per finished source, written and flushed as it finishes, so a
    run that is stopped or killed keeps what it finished and `--resume` continues from it.

    Line 1: {"event": "run", "key": ...}; then {"event": "source", "index", "source", "attempts", "section"}.
    A torn last line (killed mid-write) is ignored on resume.
    """

    def __init__(self, path: str | Path, key: dict[str, Any], resume: bool = False):
        self.path = Path(path)
        self.previous: dict[str, dict[str, Any]] = {}  # source -> section, from the run being resumed
        text = self.path.read_text(errors="replace") if resume and self.path.exists() else ""
        old = text.splitlines()
        if old:
            head = _json_line(old[0])
            if not head or head.get("event") != "run":
                raise EdgedfError(f"--resume: {self.path} is not an edgedf run log")
            if head.get("key") != key:
                raise EdgedfError(
                    f"--resume: {self.path} holds results of another bundle, threshold or sampling; "
                    "rerun without --resume or write another --jsonl"
                )
            for line in old[1:]:
                rec = _json_line(line)
                if rec and rec.get("event") == "source" and isinstance(rec.get("section"), dict):
                    self.previous[rec["source"]] = rec["section"]
        self._f = open(self.path, "a" if old else "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if not old:
            self._write({"event": "run", "key": key})
        elif not text.endswith("\n"):
            self._f.write("\n")  # end a torn line, so the next record starts on its own

    def done(self, source: str) -> dict[str, Any] | None:
        """The section of `source` from the resumed run if it was judged there (errors are tried again)."""
        s = self.previous.get(source)
        return s if s is not None and s.get("status") in ("ok", "partial") else None

    def add(self, index: int, section: dict[str, Any], attempts: int = 1) -> None:
        self._write(
            {"event": "source", "index": index, "source": section["source"], "attempts": attempts,
             "section": section}
        )  # fmt: skip

    def event(self, rec: dict[str, Any]) -> None:
        """A live event (a track's verdict given or flipped), written as it happens."""
        self._write(rec)

    def _write(self, rec: dict[str, Any]) -> None:
        self._f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _json_line(line: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None
