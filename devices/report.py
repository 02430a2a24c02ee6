"""`edgedf report`: bench results from one or more devices -> one Markdown file and one self-contained HTML
page (tables per target, PNG plots embedded as base64 data URIs, so the page is a single file to mail or
attach to CI). Plots need matplotlib (`pip install 'edgedf[plot]'`), imported only here, with Agg.
"""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from edgedf.runtime.errors import EdgedfError
from edgedf.runtime.fsutil import atomic_write_bytes

from .bench import batch_note, columns, run_facts, table_cells

STAGE_ORDER = ("decode", "detect", "track", "align", "classify", "aggregate", "annotate")


def load_results(paths: list[Path]) -> list[dict[str, Any]]:
    """Bench result files (bench-*.json, or a bench.log.jsonl with one result per line)."""
    out = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise EdgedfError(f"results file not found: {p}")
        text = p.read_text(encoding="utf-8")
        try:
            docs = (
                [json.loads(line) for line in text.splitlines() if line.strip()]
                if p.suffix == ".jsonl"
                else [json.loads(text)]
            )
        except json.JSONDecodeError as e:
            raise EdgedfError(f"{p} is not valid JSON ({e})") from None
        for d in docs:
            if isinstance(d, dict) and d.get("kind") == "edgedf-study":
                d = d["bench"]
            if not isinstance(d, dict) or d.get("kind") != "edgedf-bench":
                raise EdgedfError(f"{p} is not an edgedf bench result (kind edgedf-bench)")
            out.append(d)
    if not out:
        raise EdgedfError("no bench results given")
    return out


def merged_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for res in results:
        h = res.get("host", {})
        host = f"{h.get('cpu', '?')} ({h.get('hostname', '?')})"
        batches = tuple((res.get("options") or {}).get("batches") or (1, 8))
        for r in res["rows"]:
            rows.append({**r, "host": host, "time": res.get("time"), "batches": batches})
    return rows


def label(r: dict[str, Any]) -> str:
    return f"{r.get('target')}/{r.get('backend')} {r.get('precision')}"


# ---------------------------------------------------------------- plots


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgedfError("plots need matplotlib: pip install 'edgedf[plot]'") from None
    return plt


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x = latency, higher y = AUC)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def plot_latency_auc(rows: list[dict[str, Any]]) -> bytes | None:
    pts = [
        (r, r.get("ms_b1"), r.get("auc_frame") if r.get("auc_frame") is not None else r.get("auc_video")) for r in rows
    ]
    pts = [(r, x, y) for r, x, y in pts if x is not None and y is not None]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    front = set(pareto_front([(x, y) for _, x, y in pts]))
    for i, (r, x, y) in enumerate(pts):
        on = i in front
        ax.scatter(x, y, s=60 if on else 35, marker="*" if on else "o", zorder=3, color="C3" if on else "C0")
        ax.annotate(label(r), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    f = sorted(front, key=lambda i: pts[i][1])
    if len(f) > 1:
        ax.step([pts[i][1] for i in f], [pts[i][2] for i in f], where="post", color="C3", lw=1, label="Pareto front")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("ms/face, batch 1 (median, log scale)")
    ax.set_ylabel("AUC (frame)")
    ax.set_title("Latency vs AUC (★ Pareto front: nothing is both faster and more accurate)")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_size(rows: list[dict[str, Any]]) -> bytes | None:
    rs = [r for r in rows if r.get("size_mb") is not None]
    if not rs:
        return None
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rs:
        by[r.get("precision", "?")].append(r)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs, hs, names, colours = [], [], [], []
    x = 0
    for k, (prec, group) in enumerate(sorted(by.items())):
        for r in group:
            xs.append(x)
            hs.append(r["size_mb"])
            names.append(f"{prec}\n{r.get('target')}")
            colours.append(f"C{k % 10}")
            x += 1
        x += 0.5
    ax.bar(xs, hs, color=colours)
    for xi, h in zip(xs, hs, strict=True):
        ax.text(xi, h, f"{h:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, names, fontsize=7)
    ax.set_ylabel("bundle size (MB)")
    ax.set_title("Size per precision")
    return _png(fig)


def plot_stages(rows: list[dict[str, Any]]) -> bytes | None:
    rs = [r for r in rows if r.get("stages_s") and r.get("frames_analysed")]
    if not rs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rs) + 1.5))
    left = [0.0] * len(rs)
    for k, st in enumerate(STAGE_ORDER):
        vals = [1e3 * r["stages_s"].get(st, 0.0) / r["frames_analysed"] for r in rs]
        if not any(vals):
            continue
        ax.barh(range(len(rs)), vals, left=left, label=st, color=f"C{k}")
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_yticks(range(len(rs)), [label(r) for r in rs], fontsize=7)
    ax.set_xlabel("ms per analysed frame")
    ax.set_title("Video pipeline: time per stage")
    ax.legend(fontsize=7, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return _png(fig)


PLOTS = (
    ("latency_auc.png", "Latency vs AUC", plot_latency_auc),
    ("size.png", "Size per precision", plot_size),
    ("stages.png", "Per-stage runtime breakdown", plot_stages),
)


# ---------------------------------------------------------------- documents


class Doc:
    """A report built once, written as Markdown (PNG files beside it) and as one self-contained HTML page."""

    def __init__(self, title: str):
        self.title = title
        self.md: list[str] = [f"# {title}\n"]
        self.html: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        self.md.append("\n".join(lines) + "\n")
        th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        # a wide table scrolls inside its box; the page itself never runs off the side
        self.html.append(f'<div class="wide"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>')

    def image(self, name: str, alt: str, png: bytes) -> None:
        self.md.append(f"![{alt}]({name})\n")
        b64 = base64.b64encode(png).decode("ascii")
        self.html.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"></figure>')

    def markdown(self) -> str:
        return "\n".join(self.md)

    def page(self) -> str:
        style = (
            "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
            "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
            "th{background:#f3f3f3}td:nth-child(-n+4){text-align:left}"
            "img{max-width:100%}figure{margin:1em 0}.wide{overflow-x:auto;max-width:100%}"
            "td{overflow-wrap:anywhere;min-width:3em}p{overflow-wrap:anywhere}"
        )
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{style}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self.html) + "</body></html>\n"
        )

    def write(self, out: Path, stem: str, images: dict[str, bytes]) -> tuple[Path, Path]:
        out.mkdir(parents=True, exist_ok=True)
        for name, png in images.items():
            atomic_write_bytes(out / name, png)
        md, page = out / f"{stem}.md", out / f"{stem}.html"
        atomic_write_bytes(md, self.markdown().encode())
        atomic_write_bytes(page, self.page().encode())
        return md, page


def add_plots(doc: Doc, rows: list[dict[str, Any]], images: dict[str, bytes], prefix: str = "") -> None:
    for name, title, fn in PLOTS:
        png = fn(rows)
        doc.heading(title, 3)
        if png is None:
            doc.para("(no data for this plot: " + ("no AUC measured, bench with --data" if "AUC" in title else
                     "bench with videos in --data for stage timings") + ")")  # fmt: skip
            continue
        images[prefix + name] = png
        doc.image(prefix + name, title, png)


def build_report(results: list[dict[str, Any]], title: str = "edgedf bench report") -> tuple[Doc, dict[str, bytes]]:
    rows = merged_rows(results)
    doc = Doc(title)
    hosts = sorted({r["host"] for r in rows})
    doc.para(
        f"{len(rows)} bundle runs from {len(results)} bench result(s) on {len(hosts)} device(s): " + "; ".join(hosts)
    )
    for res in results:  # what each result's figures rest on (runs, warm-up, threads, load, flags, versions)
        facts = run_facts(res) if {"runs", "warmup"} <= set(res.get("options") or {}) else "no run facts recorded."
        doc.para(f"{res.get('host', {}).get('hostname', '?')}, {res.get('time')}: {facts}")
    by_target: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_target[str(r.get("target"))].append(r)
    for target, rs in sorted(by_target.items()):
        doc.heading(f"Target {target}")
        dev = next((r.get("device") for r in rs if r.get("device")), None)
        if dev:
            doc.para(dev)
        # one table per set of batch sizes timed: the column names say which (columns())
        for batches in sorted({r["batches"] for r in rs}):
            cells = [[r["host"], *table_cells(r)] for r in rs if r["batches"] == batches]
            doc.table(["Host", *columns(batches)], cells)
    doc.para("Status: ✅ runs and passes; ❎ runs but fails parity or the AUC floor; ❌ does not run there.")
    for batches in sorted({r["batches"] for r in rows}):
        doc.para(batch_note(batches))
    doc.heading("Plots")
    images: dict[str, bytes] = {}
    add_plots(doc, rows, images)
    return doc, images


def write_report(paths: list[Path], out: Path, title: str = "edgedf bench report") -> tuple[Path, Path]:
    doc, images = build_report(load_results(paths), title)
    return doc.write(out, "report", images)
