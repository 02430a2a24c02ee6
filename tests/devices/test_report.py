"""`edgedf report`: merged Markdown and a self-contained HTML page, parsed back with html.parser and opened in a
real headless browser."""

from __future__ import annotations

import base64
import copy
import json
from html.parser import HTMLParser

import pytest
from devices_helpers import chromium, render_in_browser
from typer.testing import CliRunner

from edgedf.cli import app
from edgedf.devices.bench import BenchOptions, bench
from edgedf.devices.report import pareto_front

runner = CliRunner()


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.imgs: list[dict] = []
        self.tables = 0
        self.rows = 0
        self.headings: list[str] = []
        self._h = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))
        elif tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows += 1
        self._h = tag in ("h1", "h2", "h3")

    def handle_data(self, data):
        if self._h:
            self.headings.append(data)
            self._h = False


def test_pareto_front():
    pts = [(1.0, 0.7), (2.0, 0.9), (3.0, 0.8), (0.5, 0.6), (2.0, 0.85)]
    assert pareto_front(pts) == [3, 0, 1]  # (3.0, 0.8) and (2.0, 0.85) are beaten by (2.0, 0.9)


@pytest.fixture(scope="module")
def bench_results(bundles, labelled) -> dict:
    return bench(
        [bundles["ort_fp32"], bundles["cpu_ternary"], bundles["jetson_ternary"]],
        BenchOptions(data=[labelled], runs=2, warmup=1),
    )


def test_report_merges_devices(bench_results, tmp_path):
    res = copy.deepcopy(bench_results)
    # a second "device": the same results as if measured on another host, with stage timings
    other = copy.deepcopy(res)
    other["host"].update(cpu="Cortex-A76", hostname="pi5")
    for r in other["rows"]:
        r["target"] = "rpi" if r["target"] == "ort" else r["target"]
        if r.get("ms_b1"):
            r["ms_b1"] *= 5
            r["stages_s"] = {"decode": 0.5, "detect": 1.0, "track": 0.1, "align": 0.2, "classify": 0.4, "total": 2.3}
            r["frames_analysed"] = 20
    a, b = tmp_path / "x86.json", tmp_path / "pi.json"
    a.write_text(json.dumps(res))
    b.write_text(json.dumps(other))
    out = tmp_path / "report"
    r = runner.invoke(app, ["report", str(a), str(b), "--out", str(out)])
    assert r.exit_code == 0, r.output

    page = Page()
    page.feed((out / "report.html").read_text())
    assert page.tags[0] == "html" and "style" in page.tags
    # one table per target: cpu, jetson, ort, rpi
    assert page.tables == 4
    assert {"Target cpu", "Target jetson", "Target ort", "Target rpi"} <= set(page.headings)
    assert page.rows == 4 + 6  # a header row per table, one row per bundle run
    # three plots, embedded (no file references): latency vs AUC, size, stages
    assert len(page.imgs) == 3
    for img in page.imgs:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert md.count("| Host | Target | Backend |") == 4 and "pi5" in md and "❌ error: tensorrt not installed" in md
    for name in ("latency_auc.png", "size.png", "stages.png"):
        assert f"]({name})" in md and (out / name).stat().st_size > 1000
    assert "✅ pass" in md  # a word beside each icon: a page without an emoji font still says it
    # each result's run facts, and the batch sizes each was timed at in its columns (b1/b8 here)
    assert md.count("2 timed runs per batch size after 1 warm-up") == 2 and "pi5, " in md
    assert "ms/face b1" in md and "faces/s b8" in md


def test_report_names_the_batch_sizes_each_result_timed(bench_results, tmp_path):
    """A result benched with --batch 2,16 keeps its own columns (b2/b16) beside one benched at 1,8."""
    other = copy.deepcopy(bench_results)
    other["host"]["hostname"] = "kiosk"
    other["options"]["batches"] = [2, 16]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(bench_results))
    b.write_text(json.dumps(other))
    r = runner.invoke(app, ["report", str(a), str(b), "--out", str(tmp_path / "report")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "report" / "report.md").read_text()
    # per target, a table for each set of batch sizes: 3 targets x 2
    assert md.count("| Host | Target |") == 6
    assert md.count("ms/face b2 |") == 3 and md.count("faces/s b16 |") == 3 and md.count("faces/s b8 |") == 3
    tables = md.split("| Host | Target |")[1:]
    assert all(("kiosk" in t) == ("b16 |" in t.split("\n", 1)[0]) for t in tables)
    assert "batch-16 throughput" in md and "batch-8 throughput" in md


def test_report_page_fits_a_1280px_browser(tmp_path, bench_results):
    """Opened in a real browser (headless Chromium) at 1280 px: nothing runs off the page, the plots
    decode, and every status cell carries a word."""
    if chromium() is None:
        pytest.skip("no Chromium here (apt-get install chromium)")
    a = tmp_path / "r.json"
    a.write_text(json.dumps(bench_results))
    out = tmp_path / "report"
    assert runner.invoke(app, ["report", str(a), "--out", str(out)]).exit_code == 0
    seen = render_in_browser(out / "report.html")
    assert seen["scrollWidth"] <= seen["clientWidth"] <= 1280, seen
    assert len(seen["images"]) >= 2 and all(w > 0 for w in seen["images"])
    statuses = [c for c in seen["cells"] if c[:1] in "✅❎❌"]
    assert statuses and all(c.split()[1].rstrip(":") in ("pass", "fail", "error") for c in statuses)


def test_bad_results_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"kind": "something else"}')
    r = runner.invoke(app, ["report", str(p), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not an edgedf bench result" in r.output
    r = runner.invoke(app, ["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not found" in r.output
