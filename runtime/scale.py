"""Many sources at once: in this process, in a local process pool (`--workers N`) or on Ray (`--ray`).

The unit of work is one source, `analyse_source`, the same function in every mode, so a source's report
section does not depend on where it ran. A worker builds its pipeline (bundle, detector, sessions) once and
is given one source at a time: a source is only handed out when a worker is free, so a lost worker costs
the source it held and nothing else, and that source is retried (`retries`, default once). No scheduler of
our own: concurrent.futures on one machine, Ray actors across machines (Ray restarts a dead actor).

Outcomes come back as sources finish (not in input order); callers order them by `Job.index`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bundle import Bundle, load_bundle
from .errors import EdgedfError, one_line
from .pipeline import Pipeline, RunOptions, error_section

LOST = "a worker process died while analysing this source"
PROBES = 60  # a restarting Ray actor is asked this many times, 0.5 s apart, before it counts as gone


@dataclass(frozen=True)
class PipelineSpec:
    """What a worker needs to build its pipeline: small and picklable, shipped to every worker."""

    bundle: str
    backend: str | None = None
    detector: str = "retinaface"
    threads: int = 0
    options: RunOptions = field(default_factory=RunOptions)

    def build(self, bundle: Bundle | None = None) -> Pipeline:
        """The pipeline, from `bundle` when the caller has it loaded already, else loaded from the path."""
        b = bundle if bundle is not None else load_bundle(self.bundle)
        return Pipeline(b, self.backend, self.detector, self.threads, self.options)


@dataclass(frozen=True)
class Job:
    index: int  # position in the input list: the report keeps input order whatever finishes first
    source: str
    annotate: str | None = None


@dataclass
class Outcome:
    job: Job
    section: dict[str, Any]  # the source's report section (status ok, partial or error)
    facts: dict[str, Any] | None  # Pipeline.describe() of the worker that ran it (None: the worker was lost)
    attempts: int = 1


def analyse_source(
    pipe: Pipeline,
    source: str,
    annotate: str | Path | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    debug: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """One source's report section; bad input or a failure on this source becomes an error section
    (one line), never an exception, so the other sources still run."""
    try:
        ann = Path(annotate) if annotate else None
        return pipe.run_source(source, annotate=ann, progress=progress, on_event=on_event, stop=stop)
    except EdgedfError as e:
        return error_section(source, str(e))
    except Exception as e:
        if debug:
            raise
        return error_section(source, f"analysis failed: {one_line(e)} (edgedf --debug run ... for the traceback)")


class WorkerStartError(EdgedfError):
    """A worker could not build its pipeline (backend missing on that machine, bundle unreadable there)."""


def default_threads(workers: int) -> int:
    """Backend threads per worker when the user gave none: the cores shared out, at least one each."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


# --- in this process ----------------------------------------------------------------------------------


def run_in_process(
    pipe: Pipeline,
    jobs: Iterable[Job],
    debug: bool = False,
    frame_progress: Callable[[Job], Callable[[int, int | None], None] | None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Iterator[Outcome]:
    """Sources one after another here; live verdict events go to `on_event`; once `stop()` is true the
    source being analysed ends early (partial, judged on what was seen) and no other starts."""
    facts = pipe.describe()
    for job in jobs:
        if stop is not None and stop():
            return
        prog = frame_progress(job) if frame_progress else None
        yield Outcome(job, analyse_source(pipe, job.source, job.annotate, prog, debug, on_event, stop), facts)


# --- a local process pool -----------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}  # per worker process: the spec it was built from and its pipeline


def _worker_pipeline(spec: PipelineSpec) -> Pipeline:
    if not _WORKER:  # first call in this worker: SIGTERM (the pool stopping) unwinds, so a half-written
        import signal  # annotated video is removed rather than left behind as a temp file
        import sys

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if _WORKER.get("spec") != spec:
        try:
            _WORKER["pipe"] = spec.build()
        except Exception as e:
            raise WorkerStartError(
                f"a worker could not start: {e if isinstance(e, EdgedfError) else one_line(e)}"
            ) from None
        _WORKER["spec"] = spec
    return _WORKER["pipe"]


def _pool_task(spec: PipelineSpec, job: Job, debug: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        pipe = _worker_pipeline(spec)
        return analyse_source(pipe, job.source, job.annotate, debug=debug), pipe.describe()
    except SystemExit as e:  # SIGTERM: unwound (temp files gone); now really leave. concurrent.futures would
        os._exit(e.code if isinstance(e.code, int) else 143)  # catch SystemExit and wait for the next source


def run_pool(spec: PipelineSpec, jobs: Iterable[Job], workers: int, retries: int = 1, debug: bool = False):
    """Sources on `workers` local processes (spawned: a fork would copy the parent's thread pools).

    When a worker dies, concurrent.futures fails every source in flight. Each of them is charged an attempt
    and run again *alone*; whichever dies alone is the culprit and, past `retries`, reported as an error.
    The pool is rebuilt and the rest carries on.
    """
    queue: deque[Job] = deque(jobs)
    suspects: deque[Job] = deque()
    attempts: dict[int, int] = {}
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    running: dict[Future, Job] = {}
    suspect_running = False
    try:
        while queue or suspects or running:
            while len(running) < workers and not suspect_running:
                if suspects:
                    if running:
                        break  # a suspect runs alone: wait for the others to finish first
                    job, suspect_running = suspects.popleft(), True
                elif queue:
                    job = queue.popleft()
                else:
                    break
                attempts[job.index] = attempts.get(job.index, 0) + 1
                running[pool.submit(_pool_task, spec, job, debug)] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                wait(running)  # the others in flight fail with it (or finished just before)
                done = set(running)
            lost: list[Job] = []
            for f in done:
                job = running.pop(f)
                err = f.exception()
                if isinstance(err, BrokenProcessPool):
                    lost.append(job)
                    continue
                if err is not None:
                    raise err  # WorkerStartError, or --debug's traceback
                section, facts = f.result()
                yield Outcome(job, section, facts, attempts[job.index])
            if not running:
                suspect_running = False
            if lost:
                _stop(pool)
                pool = ProcessPoolExecutor(workers, mp_context=ctx)
                suspect_running = False
                for job in sorted(lost, key=lambda j: j.index):
                    if attempts[job.index] > retries:
                        yield Outcome(job, error_section(job.source, f"{LOST} ({attempts[job.index]} attempts)"),
                                      None, attempts[job.index])  # fmt: skip
                    else:
                        suspects.append(job)
    except BaseException:  # Ctrl-C, SIGTERM, the caller stopped early: the workers stop now, not after their source
        _stop(pool)
        raise
    pool.shutdown(wait=True)


def _stop(pool: ProcessPoolExecutor) -> None:
    """End a pool now: its surviving workers are terminated and joined (a broken pool's idle survivor
    would otherwise keep the interpreter from exiting)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for proc in procs:
        proc.terminate()
    for proc in procs:  # a worker blocked on a queue lock that a killed worker held never sees SIGTERM's unwinding
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    pool.shutdown(wait=True, cancel_futures=True)


# --- Ray ----------------------------------------------------------------------------------------------


def import_ray():
    try:
        import ray
    except ImportError:
        raise EdgedfError("--ray needs Ray: pip install 'edgedf[ray]'") from None
    return ray


class _RunWorkerImpl:
    """One Ray actor: a pipeline built once, one source per call."""

    def __init__(self, spec: PipelineSpec, debug: bool, cwd: str):
        self.debug = debug
        if os.path.isdir(cwd):  # relative paths mean what they mean to the driver (same cwd on shared storage)
            os.chdir(cwd)
        try:
            self.pipe, self.error = spec.build(), None
        except Exception as e:  # reported by ready(), so the driver can stop with one line
            self.pipe, self.error = None, str(e) if isinstance(e, EdgedfError) else one_line(e)

    def ready(self) -> str | None:
        return self.error

    def pid(self) -> int:
        return os.getpid()

    def run(self, job: Job) -> tuple[dict[str, Any], dict[str, Any]]:
        return analyse_source(self.pipe, job.source, job.annotate, debug=self.debug), self.pipe.describe()


def ray_init(address: str | None) -> Any:
    """Connect to Ray: None autodetects as ray.init() does (RAY_ADDRESS, then the latest `ray start` on this
    machine, else a new local instance); "local" always starts a new one; "auto" or HOST:PORT or
    ray://HOST:PORT join a cluster."""
    ray = import_ray()
    if not ray.is_initialized():
        import logging

        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise EdgedfError(
                f"cannot reach a Ray cluster at {address or 'the default address'}: {one_line(e)}"
            ) from None
    return ray


def ray_workers(address: str | None, cpus_per_worker: int = 1) -> int:
    """How many actors fill the cluster (connecting to it first): its CPUs / `cpus_per_worker`."""
    ray = ray_init(address)
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_worker)


def run_ray(
    spec: PipelineSpec,
    jobs: Iterable[Job],
    workers: int,
    address: str | None = None,
    cpus_per_worker: int = 1,
    retries: int = 1,
    debug: bool = False,
) -> Iterator[Outcome]:
    """Sources on `workers` Ray actors of `cpus_per_worker` CPUs each (`ray_workers` fills the cluster).

    Paths must be readable on every node (shared storage, relative paths resolved against the driver's
    working directory where it exists on the node) and edgedf installed there. A dead actor is
    restarted by Ray (on another node if its node is gone); the source it held is run again, up to
    `retries` times.
    """
    ray = ray_init(address)
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError

    lost_errors = (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError)
    worker_cls = ray.remote(max_restarts=-1, max_task_retries=0)(_RunWorkerImpl)
    actors = [worker_cls.options(num_cpus=cpus_per_worker).remote(spec, debug, os.getcwd()) for _ in range(workers)]
    try:
        for err in ray.get([a.ready.remote() for a in actors]):
            if err:
                raise WorkerStartError(f"a Ray worker could not start: {err}")
        queue: deque[Job] = deque(jobs)
        attempts: dict[int, int] = {}
        free = list(actors)
        running: dict[Any, tuple[Any, Job | None]] = {}  # job None: a probe of a restarting actor
        dead, probes = 0, {}
        while queue or any(job is not None for _, job in running.values()):
            while free and queue:
                actor, job = free.pop(), queue.popleft()
                attempts[job.index] = attempts.get(job.index, 0) + 1
                running[actor.run.remote(job)] = (actor, job)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, job = running.pop(ref)
            try:
                result = ray.get(ref)
            except lost_errors:
                if job is None:  # its probe failed: still restarting (a busy node takes a while), or gone
                    probes[actor] = probes.get(actor, 0) + 1
                    if probes[actor] < PROBES:
                        time.sleep(0.5)
                        running[actor.ready.remote()] = (actor, None)
                        continue
                    dead += 1
                    if dead == len(actors):
                        raise EdgedfError("every Ray worker was lost and none could be restarted") from None
                    continue
                # the actor died: Ray restarts it (elsewhere if its node is gone). It gets no source until
                # it answers again, so the lost source is not sent straight back to a dead actor.
                probes[actor] = 0
                running[actor.ready.remote()] = (actor, None)
                if attempts[job.index] > retries:
                    yield Outcome(job, error_section(job.source, f"{LOST} ({attempts[job.index]} attempts)"),
                                  None, attempts[job.index])  # fmt: skip
                else:
                    queue.appendleft(job)
                continue
            free.append(actor)
            if job is not None:
                section, facts = result
                yield Outcome(job, section, facts, attempts[job.index])
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)


def run_key(spec: PipelineSpec, bundle) -> dict[str, Any]:
    """What makes two runs' per-source results interchangeable (`--resume` checks it): the model file,
    the decision rules, the sampling and the detector."""
    from .pipeline import decision_rules

    threshold, policy = decision_rules(bundle, spec.options)
    o = spec.options
    return {
        "entry_sha256": bundle.manifest["files"][bundle.manifest["entry"]]["sha256"],
        "threshold": threshold,
        "verdict_policy": policy.to_dict(),
        "sampling": o.sampling.to_dict(),
        "detect_every": o.detect_every,
        "tracking": o.track,
        "max_faces": o.max_faces,
        "detector": spec.detector,
    }
