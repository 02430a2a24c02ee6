"""Many sources: `--workers N` (a local process pool) and `--ray` (a real local Ray instance) give the same
per-source results as one process; a failing source stays one error; a worker killed mid-run costs its
source a retry, not the run; --jsonl streams results and --resume continues them; SIGINT/SIGTERM keep
what finished."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from runtime_media import face_frames, write_h264
from typer.testing import CliRunner

from edgedf.cli import app, ray_flag_argv
from edgedf.runtime.decode import Sampling
from edgedf.runtime.pipeline import RunOptions
from edgedf.runtime.report import load_schema
from edgedf.runtime.scale import Job, PipelineSpec, run_in_process, run_pool

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["run", *map(str, args)], env={"COLUMNS": "200"})


def comparable(section: dict) -> dict:
    """A source's section without what depends on the machine's load (timings, speed)."""
    return {k: v for k, v in section.items() if k not in ("timings_s", "speed")}


@pytest.fixture(scope="module")
def sources(tmp_path_factory, face_video, noface_video) -> list[str]:
    d = tmp_path_factory.mktemp("many")
    short = write_h264(d / "short.mp4", face_frames(24, moving=False))
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))  # not decodable
    return [str(face_video), str(noface_video), str(short), str(d / "broken.mp4"), str(d / "missing.mp4")]


def _report(path: Path) -> dict:
    rep = json.loads(path.read_text())
    jsonschema.validate(rep, load_schema())
    return rep


def test_workers_give_the_same_results_as_one_process(tiny_bundle, sources, tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    r1 = run(*sources, "--bundle", tiny_bundle, "--every", "2", "--json", one)
    r2 = run(*sources, "--bundle", tiny_bundle, "--every", "2", "--json", two, "--workers", "2")
    assert r1.exit_code == r2.exit_code == 1, (r1.output, r2.output)  # some judged, some errors
    a, b = _report(one), _report(two)
    assert [s["source"] for s in b["sources"]] == sources  # input order, whatever finished first
    assert [comparable(s) for s in a["sources"]] == [comparable(s) for s in b["sources"]]
    assert [s["status"] for s in b["sources"]] == ["ok", "ok", "ok", "error", "error"]
    assert a["execution"]["mode"] == "local" and b["execution"] == {
        "mode": "workers", "workers": 2, "resumed": 0, "retried": [], "interrupted": False,
    }  # fmt: skip
    assert b["backend"]["threads"] == max(1, (os.cpu_count() or 1) // 2)  # cores shared out
    assert "[5/5]" in r2.output and f"error: file not found: {sources[4]}" in r2.output


def _jobs_and_references(spec, quick: Path, long: Path):
    """A quick source first, so it finishes while the other worker is still busy with a long one."""
    jobs = [Job(0, str(quick))] + [Job(i, str(long)) for i in range(1, 6)]
    pipe = spec.build()
    refs = {str(p): comparable(next(run_in_process(pipe, [Job(0, str(p))])).section) for p in (quick, long)}
    return jobs, refs


@pytest.fixture(scope="module")
def quick_clip(tmp_path_factory) -> Path:
    return write_h264(tmp_path_factory.mktemp("quick") / "quick.mp4", face_frames(4, moving=False))


def test_a_killed_worker_costs_its_sources_a_retry_not_the_run(tiny_bundle, face_video, quick_clip):
    """A worker process is SIGKILLed while sources are in flight: every source still gets its result
    (the ones in flight run again), identical to an undisturbed run."""
    spec = PipelineSpec(str(tiny_bundle), options=RunOptions(sampling=Sampling("every", 1)))
    jobs, refs = _jobs_and_references(spec, quick_clip, face_video)
    outcomes, killed = [], []
    for out in run_pool(spec, jobs, workers=2):
        outcomes.append(out)
        if not killed:  # the other worker is still busy with its source, more are queued
            victim = mp.active_children()[0]
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)
    assert sorted(o.job.index for o in outcomes) == list(range(6))
    assert all(o.section["status"] == "ok" for o in outcomes)
    assert all(comparable(o.section) == refs[o.job.source] for o in outcomes)
    assert any(o.attempts == 2 for o in outcomes)  # what was in flight ran again


def test_jsonl_streams_sources_and_resume_skips_them(tiny_bundle, sources, tmp_path):
    log, rep = tmp_path / "run.jsonl", tmp_path / "r.json"
    r = run(*sources[:2], "--bundle", tiny_bundle, "--every", "3", "--jsonl", log)
    assert r.exit_code == 1, r.output  # the no-face clip is not judged
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    done = [x for x in lines if x["event"] == "source"]
    assert lines[0]["event"] == "run" and [x["source"] for x in done] == sources[:2]
    first = {x["source"]: x["section"] for x in done}
    # live verdict events: the face clip's one track got its verdict once, before its source finished
    (ev,) = [x for x in lines if x["event"] == "verdict"]
    assert ev["source"] == sources[0] and ev["track"] == 1 and ev["verdict"] == first[sources[0]]["video"]["verdict"]
    assert lines.index(ev) < lines.index(done[0])
    # a torn last line (a run killed mid-write) is ignored
    with open(log, "a") as f:
        f.write('{"event": "source", "sour')
    listing = tmp_path / "list.txt"
    listing.write_text("# sources\n" + "\n".join(sources[:3]) + "\n\n")
    r = run("--from-list", listing, "--bundle", tiny_bundle, "--every", "3", "--jsonl", log, "--resume", "--json", rep)
    assert r.exit_code == 1, r.output
    report = _report(rep)
    assert report["execution"]["resumed"] == 2  # both judged before (a face-less one is judged "unknown")
    assert [s["source"] for s in report["sources"]] == sources[:3]
    assert report["sources"][0] == first[sources[0]]  # taken from the log as it was, not rerun
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.endswith("}")]
    assert [x["source"] for x in lines if x["event"] == "source"][-1] == sources[2]
    # another threshold: the log's results do not apply
    r = run(sources[0], "--bundle", tiny_bundle, "--every", "3", "--jsonl", log, "--resume", "--threshold", "0.1")
    assert r.exit_code == 2 and "another bundle, threshold or sampling" in r.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--resume"], "--resume needs --jsonl"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--from-list", "/nonexistent/list.txt"], "--from-list: cannot read"),
    ],
)
def test_bad_scale_options_are_one_line(tiny_bundle, face_video, args, message):
    r = run(face_video, "--bundle", tiny_bundle, *args)
    assert r.exit_code == 2 and message in r.output, r.output


def test_no_source_at_all(tiny_bundle, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert "no source given" in run("--bundle", tiny_bundle).output
    r = run("--from-list", empty, "--bundle", tiny_bundle)
    assert r.exit_code == 2 and "lists no source" in r.output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_writes_what_finished(tiny_bundle, tmp_path, sig):
    clip = write_h264(tmp_path / "clip.mp4", face_frames(30, moving=False))
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([str(clip)] * 400))  # far more than finishes before the signal
    rep, log = tmp_path / "r.json", tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "edgedf", "run", "--from-list", str(listing), "--bundle", str(tiny_bundle),
           "--every", "5", "--json", str(rep), "--jsonl", str(log)]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or log.read_text().count('"event":"source"') < 2):
        time.sleep(0.1)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    report = _report(rep)
    n = report["summary"]["n_sources"]
    assert 2 <= n < 400 and report["execution"]["interrupted"] is True
    assert f"interrupted: {n} of 400 sources finished" in err
    logged = [json.loads(x) for x in log.read_text().splitlines()]
    assert sum(x["event"] == "source" for x in logged) == n  # every finished source is in the log too


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is not None, reason="Ray is installed here (the device install has none)"
)
def test_ray_without_ray_installed_says_how_to_get_it(tiny_bundle, face_video):
    r = run(face_video, "--bundle", tiny_bundle, "--ray", "local")
    assert r.exit_code == 2 and "pip install 'edgedf[ray]'" in r.output and "Traceback" not in r.output


def test_bare_ray_flag_autodetects():
    assert ray_flag_argv(["run", "--ray", "a.mp4"]) == ["run", "--ray=", "a.mp4"]
    assert ray_flag_argv(["run", "a.mp4", "--ray"]) == ["run", "a.mp4", "--ray="]
    assert ray_flag_argv(["run", "--ray", "auto", "a.mp4"]) == ["run", "--ray", "auto", "a.mp4"]
    assert ray_flag_argv(["run", "--ray", "10.0.0.5:6379", "x"])[1:3] == ["--ray", "10.0.0.5:6379"]
    assert ray_flag_argv(["run", "--ray", "rtsp://cam/1"]) == ["run", "--ray=", "rtsp://cam/1"]


# --- Ray: a real local instance (the device install has no Ray: CI's wheel stage deselects these) ---------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    from edgedf.runtime.scale import ray_init

    ray_init("local")
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_gives_the_same_results_as_one_process(local_ray, tiny_bundle, sources, tmp_path):
    one, dist = tmp_path / "one.json", tmp_path / "ray.json"
    r1 = run(*sources, "--bundle", tiny_bundle, "--every", "2", "--json", one, "--threads", "1")
    r2 = run(*sources, "--bundle", tiny_bundle, "--every", "2", "--json", dist, "--ray", "local", "--workers", "2")
    assert r1.exit_code == r2.exit_code == 1, (r1.output, r2.output)
    a, b = _report(one), _report(dist)
    assert [comparable(s) for s in a["sources"]] == [comparable(s) for s in b["sources"]]
    assert b["execution"]["mode"] == "ray" and b["execution"]["workers"] == 2
    assert b["sources"][4]["error"] == f"file not found: {sources[4]}"  # a failing source: one error


def _ray_worker_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "cmdline").read_bytes().startswith(b"ray::_RunWorkerImpl"):
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


@pytest.mark.ray
def test_ray_worker_killed_mid_run(local_ray, tiny_bundle, face_video, quick_clip):
    from edgedf.runtime.scale import run_ray

    spec = PipelineSpec(str(tiny_bundle), threads=1, options=RunOptions(sampling=Sampling("every", 1)))
    jobs, refs = _jobs_and_references(spec, quick_clip, face_video)
    outcomes, killed = [], []
    for out in run_ray(spec, jobs, workers=2):
        outcomes.append(out)
        if not killed:
            pids = _ray_worker_pids()
            assert pids, "no Ray worker process found"
            for pid in pids:  # both actors: the busy one's source must be retried
                os.kill(pid, signal.SIGKILL)
            killed.extend(pids)
    assert sorted(o.job.index for o in outcomes) == list(range(6))
    assert all(comparable(o.section) == refs[o.job.source] for o in outcomes)
    assert any(o.attempts == 2 for o in outcomes)
