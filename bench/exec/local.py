"""Suite trials on this machine without Ray: start-up is paid once, not per trial.

Packs (``bench.exec.trial.Pack``: trials trained as one program, or one trial) run in long-lived worker
processes, or in the driver's own process when one runs at a time. A worker imports torch and MLflow once (they
are preloaded in a forkserver, so a replacement worker starts in a fraction of a second), keeps each dataset it
loaded in memory (``bench.data.keep_in_memory``) and runs pack after pack. The driver hands it the body
(``bench.exec.trial.run_pack``, as it hands Ray), so the MLflow records, checkpoints and resume are the same; the
driver side (stale runs, finished keys, the parent run) is ``bench.exec.driver``'s for both executors. Progress
goes to the driver's ``bench.exec.progress.TrialEvents``, one trial per member.

Failures as under Ray Tune with ``FailureConfig(max_failures=2)``: a pack whose training raises, or whose worker
dies, is retried up to twice (in a new worker after a death), each member continuing from its checkpoint (a
member that already ended keeps its result); then its unfinished members are failed. A diverged trial is a
result. Workers die with the driver: PR_SET_PDEATHSIG on Linux, a parent check elsewhere,
and a closed pipe ends one waiting for work.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.exec.progress import TrialEvents
from bench.exec.trial import MemberReport, Pack, PackBody, SuiteContext
from bench.track.store import StoreWatch

#: a trial is tried at most 1 + MAX_FAILURES times, as Ray Tune's FailureConfig(max_failures=2)
MAX_FAILURES = 2
#: what the forkserver imports once for every worker it forks
PRELOAD = ["torch", "mlflow", "bench.exec.trial", "bench.train", "bench.pack", "bench.track.run"]
#: the trial runs' tag that says which executor ran them
LOCAL_TAGS = {"executor": "local"}
#: how long stopped workers get to end their runs (KILLED) before they are killed
STOP_GRACE_S = 10.0


@dataclass
class Job:
    """One pack and what the driver knows of it."""

    number: int
    pack: Pack
    failures: int = 0
    top1: dict[int, float] = field(default_factory=dict)  # member -> its last epoch's test top-1 (the end line)
    ended: dict[int, str] = field(default_factory=dict)  # member -> its status, once it ended

    def point(self, member: int) -> str:
        return f"local-{self.number}" if len(self.pack.trials) == 1 else f"local-{self.number}.{member}"

    @property
    def open(self) -> list[int]:
        """The members that have not ended."""
        return [i for i in range(len(self.pack.trials)) if i not in self.ended]


class Book:
    """The queue of packs, their retries and the progress lines, for the driver and for a pool alike."""

    def __init__(self, packs: Sequence[Pack], progress: TrialEvents, watch: StoreWatch):
        self.pending = [Job(i, p) for i, p in enumerate(packs)]
        self.progress, self.watch = progress, watch

    def next(self) -> Job | None:
        return self.pending.pop(0) if self.pending and not self.watch.lost else None

    def started(self, job: Job) -> None:
        if job.failures == 0:
            for i, trial in enumerate(job.pack.trials):
                self.progress.started(job.point(i), trial)

    def report(self, job: Job, r: MemberReport) -> None:
        """A member's epoch (its top-1 for the end line) or its end (its end line now, not when the pack ends)."""
        top1 = r.metrics.get("test_top1")
        if isinstance(top1, (int, float)):
            job.top1[r.member] = float(top1)
        if r.status is not None and r.member not in job.ended:
            job.ended[r.member] = r.status
            self.progress.ended(job.point(r.member), job.pack.trials[r.member], r.status,
                                None if r.status == "diverged" else job.top1.get(r.member))

    def done(self, job: Job, statuses: Sequence[str]) -> None:
        for i, status in enumerate(statuses):
            self.report(job, MemberReport(i, {}, status))

    def errored(self, job: Job) -> None:
        """A failed attempt: retried first thing (from its members' checkpoints) while it has retries left, else
        its unfinished members are failed."""
        self.watch.check()  # a lost tracking server fails every attempt alike: stop instead (watch.lost)
        job.failures += 1
        retry = job.failures <= MAX_FAILURES and not self.watch.lost
        for i in job.open:
            if retry:
                self.progress.retried(job.point(i), job.pack.trials[i])
            else:
                self.progress.failed(job.point(i), job.pack.trials[i])
        if retry:
            self.pending.insert(0, job)

    def close(self) -> None:
        self.progress.closed()


def run_local(packs: Sequence[Pack], ctx: SuiteContext, workers: int, progress: TrialEvents, watch: StoreWatch,
              body: PackBody) -> None:
    """Run ``body`` on each of ``packs``, ``workers`` at a time: in this process for one, else in a pool of
    worker processes (``body`` must then be a module-level function: the workers receive it by reference)."""
    book = Book(packs, progress, watch)
    try:
        if workers == 1:
            _run_here(book, ctx, body)
        else:
            Pool(workers, ctx, body).run(book)
    finally:
        book.close()


def _run_here(book: Book, ctx: SuiteContext, body: PackBody) -> None:
    """One pack at a time in the driver's process: no worker to start at all."""
    from bench.data import keep_in_memory

    keep_in_memory(True)
    try:
        while (job := book.next()) is not None:
            book.started(job)
            try:
                statuses = body(job.pack, ctx, lambda r, j=job: book.report(j, r), tags=LOCAL_TAGS)
            except Exception:  # the runs are FAILED with the error as a tag; Ctrl-C and exits propagate
                book.errored(job)
                continue
            book.done(job, statuses)
    finally:
        keep_in_memory(False)


# -- the pool -----------------------------------------------------------------------------------------------
@dataclass
class Worker:
    process: Any
    conn: Any
    job: Job | None = None


class Pool:
    """``size`` worker processes, replaced when one dies; all of them stopped when the pool ends."""

    def __init__(self, size: int, ctx: SuiteContext, body: PackBody):
        import multiprocessing as mp

        # forkserver: workers fork from a clean process that imported torch once and started no threads (fork of
        # the driver could copy a held lock of one of its threads); spawn would import torch in every worker
        self.mp = mp.get_context("forkserver")
        self.mp.set_forkserver_preload(PRELOAD)
        self.size, self.ctx, self.body = size, ctx, body
        self.workers: list[Worker] = []

    def _start_worker(self) -> Worker:
        parent, child = self.mp.Pipe()
        cpus = self.ctx.cpus_per_trial
        p = self.mp.Process(target=worker_main, args=(child, os.getpid(), cpus, self.body), daemon=True,
                            name="binbench-worker")
        with _thread_env(cpus):
            p.start()
        child.close()
        w = Worker(p, parent)
        self.workers.append(w)
        return w

    def run(self, book: Book) -> None:
        from multiprocessing.connection import wait

        try:
            while True:
                self._assign(book)
                busy = [w for w in self.workers if w.job is not None]
                if not busy:
                    return
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=1.0)
                for w in busy:
                    if w.conn in ready or w.process.sentinel in ready:
                        self._receive(w, book)
        finally:
            self.stop()

    def _assign(self, book: Book) -> None:
        """Give every idle worker (starting one where the pool is short) the next pack."""
        for w in [w for w in self.workers if w.job is None and not w.process.is_alive()]:
            self.workers.remove(w)  # died between trials (the OOM killer, a kill): its place is started anew
        while True:
            idle = [w for w in self.workers if w.job is None]
            if not idle and len(self.workers) >= self.size:
                return
            job = book.next()
            if job is None:
                return
            w = idle[0] if idle else self._start_worker()
            book.started(job)
            try:
                w.conn.send((job.pack, self.ctx))
            except OSError:  # it died just now: a lost attempt, as a death mid-trial (bounded by the retries)
                w.process.join(timeout=5)
                self.workers.remove(w)
                book.errored(job)
                continue
            w.job = job

    def _receive(self, w: Worker, book: Book) -> None:
        """Read what a busy worker sent; a worker that died loses its trial to a retry in a new worker."""
        try:
            while w.conn.poll():
                kind, value = w.conn.recv()
                if kind == "report":
                    book.report(w.job, value)
                    continue
                job, w.job = w.job, None
                if kind == "done":
                    book.done(job, value)
                else:
                    book.errored(job)
                return
        except (EOFError, OSError):
            pass
        if not w.process.is_alive() or w.conn.closed:
            w.process.join(timeout=5)
            self.workers.remove(w)
            job, w.job = w.job, None
            if job is not None:
                book.errored(job)

    def stop(self) -> None:
        """Idle workers are told to exit; busy ones get SIGTERM (their run ends KILLED), then SIGKILL."""
        for w in self.workers:
            try:
                if w.job is None:
                    w.conn.send(None)
                elif w.process.pid is not None:
                    os.kill(w.process.pid, signal.SIGTERM)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        for w in self.workers:
            w.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
            w.conn.close()
        self.workers.clear()


@contextlib.contextmanager
def _thread_env(cpus: int):
    """OpenMP/BLAS thread counts = the trial's CPUs for the forkserver (started with the first worker, whose
    libraries read them as torch loads), unless the user set them: as Ray does for its workers, so parallel
    trials do not oversubscribe the cores. The driver's own environment is left as it was."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    old = {k: os.environ.get(k) for k in names}
    for k in names:
        os.environ.setdefault(k, str(cpus))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)


# -- inside a worker ----------------------------------------------------------------------------------------
def worker_main(conn: Any, driver: int, cpus: int, body: PackBody) -> None:
    """A worker's life: run the trials the driver sends until it sends None, closes the pipe or stops it."""
    _die_with_driver(driver)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the driver decides
    signal.signal(signal.SIGTERM, _interrupt)  # the driver stops this worker: end the run KILLED, not FAILED
    try:
        _serve(conn, cpus, body)
    except KeyboardInterrupt:  # stopped between trials or while starting: nothing to end, and no traceback
        pass


def _serve(conn: Any, cpus: int, body: PackBody) -> None:
    """Receive (pack, ctx), run it, send its members' epochs and ends and its end; exit on None or EOF."""
    import torch

    from bench.data import keep_in_memory

    torch.set_num_threads(cpus)
    keep_in_memory(True)
    send: Callable[[tuple], None] = conn.send
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the driver is gone
            return
        if msg is None:
            return
        pack, ctx = msg
        try:
            statuses = body(pack, ctx, lambda r: send(("report", r)), tags=LOCAL_TAGS)
        except Exception as exc:  # the runs are FAILED with the error as a tag; the driver decides on a retry
            send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        send(("done", statuses))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _die_with_driver(driver: int) -> None:
    """End this worker when the driver dies, even by SIGKILL: when its parent (the forkserver, which ends once no
    process holds its "alive" pipe) dies, and, as a fallback, when a poll finds the driver gone."""
    parent = os.getppid()
    _release_forkserver()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent or not _alive(driver):  # it died before the lines above
        os._exit(1)
    import threading

    def watch() -> None:
        while os.getppid() == parent and _alive(driver):
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="binbench-driver-watch", daemon=True).start()


def _release_forkserver() -> None:
    """Close this worker's copy of the driver's end of the forkserver's "alive" pipe: multiprocessing hands it to
    every child, and while a worker holds it the forkserver outlives a killed driver (and the worker with it)."""
    with contextlib.suppress(Exception):  # a private attribute: without it, the driver poll still ends us
        from multiprocessing import forkserver

        fd = forkserver._forkserver._forkserver_alive_fd
        if fd is not None:
            forkserver._forkserver._forkserver_alive_fd = None
            os.close(fd)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: a signal 0 tells at least whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
