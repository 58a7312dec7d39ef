"""Running a suite: the driver. One execution per ``suite run``, every trial tracked in MLflow, resumable.

The driver checks what can be checked in seconds (``bench.exec.checks``), holds the results folder's lock, opens
the execution's parent run, packs the unfinished trials (``bench.exec.plan``: trials of one shape train as one
program), hands the packs, the suite context and the body (``bench.exec.trial.run_pack``) to an executor
(``bench.exec.local`` or ``bench.exec.ray_tune``) and closes the parent run with what they came to.

Resumption does not rely on Ray's experiment state (after a SIGKILL of the driver Ray restarts every trial):
the driver asks MLflow which trial keys already ended and submits only the others; each trial keeps its own
checkpoints under ``<results>/checkpoints/<key>/`` and continues from the last one.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.errors import BinbenchError
from bench.exec.checks import (
    _holder_text,
    check_arguments,
    check_results_dir,
    check_trial_data,
    probe_address,
    results_lock,
)
from bench.exec.plan import PackMode
from bench.exec.trial import SuiteContext, run_pack
from bench.suite import Suite, Trial
from bench.track import store as tracking

T = TypeVar("T")
Log = Callable[[str], None]


@dataclass(frozen=True)
class SuiteOutcome:
    results_dir: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    submitted: int
    skipped: int
    statuses: dict[str, str]  # key -> finished | diverged | failed | unfinished | missing


@dataclass(frozen=True)
class Execution:
    """How a suite execution runs its trials: the command line's choices, checked."""

    executor: str  # local | ray
    resume: bool = False
    address: str | None = None
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    pack: PackMode = PackMode("auto")


def run_suite(suite: Suite, results_dir: str | os.PathLike, *, resume: bool = False, address: str | None = None,
              cpus_per_trial: int = 1, gpus_per_trial: float = 0.0, tracking_uri: str | None = None,
              max_concurrent: int | None = None, executor: str = "auto", pack: str | int = "auto",
              log: Log = print) -> SuiteOutcome:
    """Check everything that can be checked in seconds, then run the suite's unfinished trials on Ray Tune or
    the local executor (``executor``: local, ray, or auto, see :func:`pick_executor`).

    Before anything starts (no folder, no Ray, no MLflow run): the arguments, the trials' data, the Ray
    address (a socket probe), the results folder (a folder, writable), its lock (one suite execution per folder),
    the tracking store (reached within seconds). Then runs a killed driver or worker left RUNNING are marked
    KILLED, and the executor starts; on any exit the suite's runs are ended (KILLED on an interruption).
    ``pack``: auto (trials of one shape train as one program, as many as memory allows), off, or a cap N.
    """
    check_arguments(cpus_per_trial, gpus_per_trial, max_concurrent, address)
    how = Execution(pick_executor(executor, suite, address, gpus_per_trial), resume, address, cpus_per_trial,
                    gpus_per_trial, max_concurrent, PackMode.parse(pack))
    check_trial_data(suite)
    if address:
        probe_address(address)
    results = check_results_dir(results_dir)
    with results_lock(results, suite.name):
        return _run_locked(suite, results, how, tracking_uri, log)


def _run_locked(suite: Suite, results: Path, how: Execution, tracking_uri: str | None, log: Log) -> SuiteOutcome:
    from bench.track.record import artifact_root, quiet_mlflow

    uri = tracking.absolute_uri(tracking_uri or tracking.default_tracking_uri(results))  # trials run elsewhere
    quiet_mlflow()
    exp_id = tracking.check_store(uri, suite.name, artifact_root(uri, results))
    os.environ.update(tracking.suite_http_env())  # the driver's own calls give up in seconds, too
    stale = _tracked(uri, lambda: tracking.end_stale(uri, exp_id, str(results),
                                                     exclusive_store=uri == tracking.default_tracking_uri(results)))
    keys = [t.key for t in suite.trials]
    codes = {t.key: t.spec.code for t in suite.trials if t.spec is not None}  # a trial of other code trains again
    done = _tracked(uri, lambda: tracking.finished_keys(uri, exp_id, codes)) if how.resume else set()
    todo = [_absolute_data_root(t) for t in suite.trials if t.key not in done]
    _log_start(log, how.resume, len(done & set(keys)), len(keys), len(todo), stale)
    parent = _open_parent(suite, results, uri, exp_id, {
        "cpus_per_trial": str(how.cpus_per_trial), "gpus_per_trial": str(how.gpus_per_trial),
        "executor": how.executor, "resume": str(how.resume), "trials": str(len(keys)), "submitted": str(len(todo))})
    if not todo:  # everything ended already (--resume): the parent still records what the trials came to
        return SuiteOutcome(results, uri, exp_id, parent, 0, len(keys),
                            _close_parent(suite, uri, exp_id, parent, keys, log))
    ctx = SuiteContext(uri, exp_id, parent, results, how.resume, how.cpus_per_trial, how.gpus_per_trial,
                       tuple(tracking.suite_http_env().items()))
    try:
        _execute(suite, todo, ctx, how, log)
    except BaseException:  # Ctrl-C, a lost server, a Ray failure: no run of this execution stays RUNNING
        with contextlib.suppress(Exception):
            tracking.end_children(uri, exp_id, parent)
            tracking.end_run(uri, parent, "KILLED", {tracking.STATUS_TAG: "interrupted"})
        raise
    statuses = _close_parent(suite, uri, exp_id, parent, keys, log)
    return SuiteOutcome(results, uri, exp_id, parent, len(todo), len(keys) - len(todo), statuses)


def _execute(suite: Suite, todo: Sequence[Trial], ctx: SuiteContext, how: Execution, log: Log) -> None:
    """Pack ``todo`` and hand the packs and the body to the executor; Ray is imported (and started) only for Ray."""
    from bench.exec.plan import plan_packs
    from bench.exec.progress import SuiteLines

    watch = tracking.StoreWatch(ctx.tracking_uri, log)
    workers = local_workers(how.cpus_per_trial, how.gpus_per_trial, how.max_concurrent, len(todo))
    packs = plan_packs(todo, how.pack, workers if how.executor == "local" or not how.address else 1,
                       search=bool(suite.search))
    packed = f" in {len(packs)} pack(s)" if len(packs) < len(todo) else ""
    local = how.executor == "local"
    workers = min(workers, len(packs)) if local else workers
    _record_shape(ctx, len(packs), workers if local else None)
    if local:
        from bench.exec.local import run_local

        where = "in this process" if workers == 1 else f"in {workers} worker processes"
        gpus = f", {how.gpus_per_trial:g} GPU" if how.gpus_per_trial else ""
        log(f"suite {suite.name}: {len(todo)} trial(s){packed} on this machine {where} ({how.cpus_per_trial} CPU"
            f"{gpus} each); tracking {ctx.tracking_uri}")
        run_local(packs, ctx, workers, SuiteLines(len(todo)), watch, body=run_pack)
        return
    from bench.exec import ray_tune

    ray_tmp = ray_tune.start_ray(how.address, how.cpus_per_trial, how.gpus_per_trial)
    try:
        ray_tune.run_on_ray(suite, packs, ctx, run_pack, SuiteLines(ray_tune.tune_trials(suite, packs)), watch,
                            how.max_concurrent, log)
    finally:  # also after Ctrl-C: the session folder of a Ray started here goes with it
        if ray_tmp is not None:
            ray_tune.stop_ray(ray_tmp)


def _record_shape(ctx: SuiteContext, packs: int, workers: int | None) -> None:
    """How the execution ran, on its parent run, for the report's wall-time line: its packs and (local) workers;
    Ray's concurrency is its scheduler's and is not recorded."""
    shape = {tracking.PACKS_TAG: str(packs), **({tracking.WORKERS_TAG: str(workers)} if workers else {})}
    _tracked(ctx.tracking_uri, lambda: tracking.log_values(tracking.mlflow_client(ctx.tracking_uri),
                                                           ctx.parent_run_id, {}, shape))


def _open_parent(suite: Suite, results: Path, uri: str, exp_id: str, tags: dict[str, str]) -> str:
    """The suite execution's parent run: the command, the code, versions and hardware, the suite file."""
    from bench.track.record import log_suite_file

    parent = _tracked(uri, lambda: tracking.start_parent(uri, exp_id, suite.name, {
        "suite_file": suite.path, "description": " ".join(suite.description.split())[:4000],
        tracking.COMMAND_TAG: " ".join(["binbench", *sys.argv[1:]]) if sys.argv else "", **tags,
        tracking.RESULTS_TAG: str(results), "driver": _holder_text()}))
    _tracked(uri, lambda: log_suite_file(tracking.mlflow_client(uri), parent, suite.path))
    return parent


def _close_parent(suite: Suite, uri: str, exp_id: str, parent: str, keys: list[str], log: Log) -> dict[str, str]:
    """End the runs this execution left RUNNING, count what the trials came to, end the parent run."""
    # a run still RUNNING now lost its process without ending it: a trial the scheduler stopped at its last report
    # (Ray drops the function without raising in it), or an attempt whose retries ran out
    why = "stopped" if suite.search and suite.search.get("asha") is not None else "interrupted"
    statuses = _tracked(uri, lambda: (tracking.end_children(uri, exp_id, parent, why),
                                      tracking.trial_statuses(uri, exp_id, keys))[1])
    failed = sum(1 for s in statuses.values() if s == "failed")
    unfinished = sum(1 for s in statuses.values() if s in ("unfinished", "missing"))
    if unfinished:
        log(f"{unfinished} trial(s) did not finish (interrupted or stopped): the same command with --resume "
            "continues them from their checkpoints")
    _tracked(uri, lambda: tracking.end_run(
        uri, parent, "FAILED" if failed else ("KILLED" if unfinished else "FINISHED"),
        {"finished": str(sum(s == "finished" for s in statuses.values())),
         "diverged": str(sum(s == "diverged" for s in statuses.values())), "failed": str(failed),
         "unfinished": str(unfinished)}))
    return statuses


def _log_start(log: Log, resume: bool, ended: int, trials: int, todo: int, stale: int) -> None:
    if resume:
        log(f"resume: {ended} of {trials} trials already ended, {todo} to run" if ended else
            f"resume: nothing to resume in this results folder (no trial of this suite ended here): all {todo} run")
    if stale:
        log(f"{stale} run(s) left RUNNING by an interrupted execution marked KILLED")


def _tracked(uri: str, fn: Callable[[], T]) -> T:
    """Call the tracking store; a store that stopped answering is one line that says how to continue."""
    try:
        return fn()
    except BinbenchError:
        raise
    except Exception as exc:
        msg = " ".join(str(exc).split())[:200]
        raise BinbenchError(f"MLflow tracking store {uri} failed ({type(exc).__name__}: {msg}); finished trials "
                            "are kept, unfinished ones keep their checkpoints: once the store answers again, run "
                            "the same command with --resume") from None


def local_workers(cpus_per_trial: int, gpus_per_trial: float, max_concurrent: int | None, trials: int) -> int:
    """How many trials the local executor runs at once: as many as the CPUs hold (as Ray would place them),
    capped by --max-concurrent and the trial count; GPU trials one at a time (every GPU visible to it)."""
    if gpus_per_trial > 0:
        return 1
    fit = max(1, (os.cpu_count() or 1) // cpus_per_trial)
    return max(1, min(fit, max_concurrent or fit, trials))


EXECUTORS = ("auto", "local", "ray")


def pick_executor(executor: str, suite: Suite, address: str | None, gpus_per_trial: float) -> str:
    """local or ray for ``--executor`` (auto: local unless the suite needs Ray or Ray helps; see the README).

    Ray for a cluster (``--address``), for a search suite (its samplers and ASHA are Ray Tune's) and for GPU
    trials (Ray places fractional GPUs; a GPU trial's minutes dwarf Ray's seconds of start-up); local otherwise,
    where it measured faster (start-up once instead of per worker and trial).
    """
    if executor not in EXECUTORS:
        raise BinbenchError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "local" and suite.search:
        raise BinbenchError(f"suite {suite.name} has a search: block (samplers, ASHA): it runs on Ray Tune only; "
                            "use --executor ray (or leave --executor out)")
    if executor == "local" and address:
        raise BinbenchError("--address joins a Ray cluster: use --executor ray with it (or drop --address to run "
                            "on this machine with --executor local)")
    if executor != "auto":
        return executor
    return "ray" if address or suite.search or gpus_per_trial > 0 else "local"


def _absolute_data_root(trial: Trial) -> Trial:
    """Trials run in Ray's working folder, not the driver's: a relative data root is made absolute here."""
    root = trial.spec.config.data_root
    if root:
        return trial.with_spec(trial.spec.with_execution(data_root=str(Path(root).expanduser().resolve())))
    return trial


