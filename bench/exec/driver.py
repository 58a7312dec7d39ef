"""Running a suite: one Ray Tune experiment per execution, every trial tracked in MLflow, resumable.

Resumption does not rely on Ray's experiment state (after a SIGKILL of the driver Ray restarts every trial):
the driver asks MLflow which trial keys already ended and submits only the others; each trial keeps its own
checkpoints under ``<results>/checkpoints/<key>/`` and continues from the last one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BinbenchError
from bench.suite import Suite


@dataclass
class SuiteOutcome:
    results_dir: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    submitted: int
    skipped: int
    statuses: dict[str, str]  # key -> finished | diverged | failed


def _space(spec: dict[str, Any]):
    from ray import tune

    (kind, args), = spec.items()
    return {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
            "choice": tune.choice, "randint": lambda a: tune.randint(*a), "grid": tune.grid_search}[kind](args)


def _trial_fn(config: dict[str, Any]) -> None:
    """Runs inside a Ray worker: one trial (bench.exec.trial.run_trial), its epochs reported to Tune."""
    import ray
    from ray import tune

    from bench.exec.trial import run_trial

    sampled = {k: v for k, v in config.items() if k not in ("trial", "ctx")}  # search-space values
    run_trial(dict(config["trial"]), config["ctx"], tune.report, sampled=sampled,
              restored=tune.get_checkpoint(),  # set when Ray retries this trial after a crash
              tags={"executor": "ray", "ray_node": ray.get_runtime_context().get_node_id()})


def run_suite(suite: Suite, results_dir: str | os.PathLike, *, resume: bool = False, address: str | None = None,
              cpus_per_trial: int = 1, gpus_per_trial: float = 0.0, tracking_uri: str | None = None,
              max_concurrent: int | None = None, executor: str = "auto", log=print) -> SuiteOutcome:
    """Check everything that can be checked in seconds, then run the suite's unfinished trials on Ray Tune or
    the local executor (``executor``: local, ray, or auto, see :func:`pick_executor`).

    Before anything starts (no folder, no Ray, no MLflow run): the arguments, the trials' data roots, the Ray
    address (a socket probe), the results folder (a folder, writable), its lock (one suite execution per folder),
    the tracking store (reached within seconds). Then runs a killed driver or worker left RUNNING are marked
    KILLED, and Ray starts; on any exit the suite's runs are ended (KILLED on an interruption).
    """
    from bench.track import store as tracking

    check_arguments(cpus_per_trial, gpus_per_trial, max_concurrent, address)
    executor = pick_executor(executor, suite, address, gpus_per_trial)
    check_trial_data(suite)
    if address:
        probe_address(address)
    results = check_results_dir(results_dir)
    with results_lock(results, suite.name):
        return _run_locked(suite, results, resume=resume, address=address, cpus_per_trial=cpus_per_trial,
                           gpus_per_trial=gpus_per_trial, tracking_uri=tracking_uri, max_concurrent=max_concurrent,
                           executor=executor, log=log, tracking=tracking)


def _run_locked(suite: Suite, results: Path, *, resume, address, cpus_per_trial, gpus_per_trial, tracking_uri,
                max_concurrent, executor, log, tracking) -> SuiteOutcome:
    uri = tracking_uri or tracking.default_tracking_uri(results)
    if uri.startswith("sqlite:///") and not uri[len("sqlite:///"):].startswith("/"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"  # trials run in another working folder
    from bench.track import record as recording

    recording.quiet_mlflow()
    exp_id = tracking.check_store(uri, suite.name, recording.artifact_root(uri, results))
    os.environ.update(tracking.suite_http_env())  # the driver's own calls give up in seconds, too
    stale = _tracked(uri, lambda: tracking.end_stale(uri, exp_id, str(results),
                                                     exclusive_store=uri == tracking.default_tracking_uri(results)))
    keys = [t.key for t in suite.trials]
    done = _tracked(uri, lambda: tracking.finished_keys(uri, exp_id)) if resume else set()
    todo = [t for t in suite.trials if t.key not in done]
    _log_start(log, resume, len(done & set(keys)), len(keys), len(todo), stale)
    ray_tmp = _start_ray(address, cpus_per_trial, gpus_per_trial) if todo and executor == "ray" else None
    parent = _open_parent(suite, results, uri, exp_id, {
        "cpus_per_trial": str(cpus_per_trial), "gpus_per_trial": str(gpus_per_trial), "executor": executor,
        "resume": str(resume), "trials": str(len(keys)), "submitted": str(len(todo))})
    if not todo:
        _tracked(uri, lambda: tracking.end_run(uri, parent))
        return SuiteOutcome(results, uri, exp_id, parent, 0, len(keys),
                            _tracked(uri, lambda: tracking.trial_statuses(uri, exp_id, keys)))
    try:
        ctx = {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent, "results_dir": str(results),
               "resume": resume, "cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial,
               "mlflow_env": tracking.suite_http_env()}  # what every trial gets, whichever executor runs it
        (_fit if executor == "ray" else _fit_local)(suite, todo, ctx, max_concurrent, log)
    except BaseException:  # Ctrl-C, a lost server, a Ray failure: no run of this execution stays RUNNING
        with contextlib.suppress(Exception):
            tracking.end_children(uri, exp_id, parent)
            tracking.end_run(uri, parent, "KILLED", {tracking.STATUS_TAG: "interrupted"})
        raise
    finally:  # also after Ctrl-C: the session folder of a Ray started here goes with it
        if ray_tmp is not None:  # (the local executor stopped its workers itself)
            import ray

            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
    statuses = _close_parent(suite, uri, exp_id, parent, keys, log)
    return SuiteOutcome(results, uri, exp_id, parent, len(todo), len(keys) - len(todo), statuses)


def _open_parent(suite: Suite, results: Path, uri: str, exp_id: str, tags: dict[str, str]) -> str:
    """The suite execution's parent run: the command, the code, versions and hardware, the suite file."""
    from bench.env import describe
    from bench.track import record as recording
    from bench.track import store as tracking

    info = describe()
    parent = _tracked(uri, lambda: tracking.start_parent(uri, exp_id, suite.name, {
        "suite_file": suite.path, "description": " ".join(suite.description.split())[:4000],
        tracking.COMMAND_TAG: " ".join(["binbench", *sys.argv[1:]]) if sys.argv else "",
        tracking.COMMIT_TAG: info["git_commit"], **tags, tracking.RESULTS_TAG: str(results),
        "driver": _holder_text(), **{f"version.{k}": v for k, v in info["versions"].items()},
        **{f"hardware.{k}": v for k, v in info["hardware"].items()}}))
    _tracked(uri, lambda: recording.log_suite_file(tracking.mlflow_client(uri), parent, suite.path))
    return parent


def _close_parent(suite: Suite, uri: str, exp_id: str, parent: str, keys: list[str], log) -> dict[str, str]:
    """End the runs this execution left RUNNING, count what the trials came to, end the parent run."""
    from bench.track import store as tracking

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


def _log_start(log, resume: bool, ended: int, trials: int, todo: int, stale: int) -> None:
    if resume:
        log(f"resume: {ended} of {trials} trials already ended, {todo} to run")
    if stale:
        log(f"{stale} run(s) left RUNNING by an interrupted execution marked KILLED")


def _tracked(uri: str, fn):
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


def _start_ray(address: str | None, cpus_per_trial: int, gpus_per_trial: float) -> str | None:
    """Join the cluster at ``address`` or start a Ray of our own; return the session folder to remove at the end
    (None when Ray was joined or already running)."""
    import logging

    import ray

    from bench.exec.ray_tune import quiet_ray

    quiet = quiet_ray()
    # Ray's warning about experiment snapshot frequency is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ctl = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, _OneLineTrialErrors) for f in ctl.filters):
        ctl.addFilter(_OneLineTrialErrors())
    if ray.is_initialized():
        return None
    if address:
        try:
            ray.init(address=address, **quiet)
        except Exception as exc:  # ConnectionError, AuthenticationError, RuntimeError, TimeoutError
            msg = " ".join(str(exc).split())[:300]
            chain, e = [], exc
            while e is not None and len(chain) < 5:
                chain.append(type(e).__name__ + str(e))
                e = e.__cause__ or e.__context__
            hint = ("; the cluster uses token authentication (on by default in Ray 2.60): give this driver the "
                    "cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
                    if any("Authentication" in c for c in chain) else "")
            raise BinbenchError(f"cannot join the Ray cluster at {address}: {type(exc).__name__}: {msg}"
                                f"{hint}") from None
        fits = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= cpus_per_trial
                and n["Resources"].get("GPU", 0) >= gpus_per_trial]
        if not fits:
            have = ", ".join(f"{n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0):g} CPU "
                             f"{n['Resources'].get('GPU', 0):g} GPU" for n in ray.nodes() if n.get("Alive"))
            ray.shutdown()
            raise BinbenchError(f"no node of the Ray cluster at {address} has {cpus_per_trial} CPU and "
                                f"{gpus_per_trial:g} GPU for one trial (nodes: {have or 'none alive'}); lower "
                                "--cpus-per-trial / --gpus-per-trial")
        return None
    import torch

    # address='local': a new Ray of our own even when `ray start` left a cluster on this machine (ray.init without
    # an address joins it, and then refuses num_cpus); its session folder is ours, else they pile up in /tmp
    ray_tmp = tempfile.mkdtemp(prefix="binbench-ray-")
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(), _temp_dir=ray_tmp,
             **quiet)
    return ray_tmp


class _StoreWatch:
    """When a trial fails and the tracking server no longer answers, stop the suite: every further attempt would
    fail the same way. Finished work is kept; ``--resume`` continues once the server is back."""

    def __init__(self, uri: str, log):
        self.uri, self.log, self.lost = uri, log, False

    # Tune pickles its callbacks and stoppers with the experiment state; the log function need not survive that
    # (print may be wrapped by then, and a wrapped print does not pickle)
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "log"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, log=print)

    def check(self) -> None:
        """After a trial failed: does the server still take a connection? If not, stop (``lost``)."""
        import socket
        from urllib.parse import urlparse

        u = urlparse(self.uri)
        if self.lost or u.scheme not in ("http", "https"):
            return
        try:
            with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=3):
                return
        except OSError:
            self.lost = True
            self.log(f"tracking server {self.uri} no longer answers: stopping the suite (finished trials and "
                     "checkpoints are kept; run again with --resume once it is back)")

    def stopper(self):
        from ray import tune

        watch = self

        class _Stop(tune.Stopper):
            def __call__(self, trial_id, result) -> bool:
                return False

            def stop_all(self) -> bool:
                return watch.lost

        return _Stop()

    def callback(self):
        from ray import tune

        watch = self

        class _Cb(tune.Callback):
            def on_trial_error(self, iteration, trials, trial, **info):
                watch.check()

            def on_trial_recover(self, iteration, trials, trial, **info):
                watch.check()

        return _Cb()


class _OneLineTrialErrors:
    """Ray logs a failed trial with its whole traceback; one line here, the traceback stays in the trial's
    error file under ``<results>/ray`` (and the trial's MLflow run has the error as a tag)."""

    def filter(self, record) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            last = lines[-1] if lines else type(exc).__name__
            record.msg = f"{record.getMessage()}: {last[:300]} (full traceback in the trial's error.txt)"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def _fit(suite: Suite, todo: list, ctx: dict[str, Any], max_concurrent: int | None, log) -> None:
    """Run ``todo`` as one Ray Tune experiment (the search space and ASHA of a search suite included)."""
    from ray import tune

    uri, results = ctx["tracking_uri"], Path(ctx["results_dir"])
    cpus_per_trial, gpus_per_trial = ctx["cpus_per_trial"], ctx["gpus_per_trial"]
    space: dict[str, Any] = {"trial": tune.grid_search([_absolute_data_root(t.as_dict()) for t in todo]), "ctx": ctx}
    tune_cfg: dict[str, Any] = {"max_concurrent_trials": max_concurrent, "reuse_actors": True,
                                "trial_name_creator": lambda t: t.config["trial"]["label"],
                                "trial_dirname_creator": lambda t: f"{t.config['trial']['label']}-{t.trial_id}"}
    if suite.search:
        from bench.exec.asha import CellASHA

        for k, spec in suite.search["space"].items():
            space[k] = _space(spec)
        tune_cfg["num_samples"] = int(suite.search.get("num_samples", 1))
        if suite.search.get("asha") is not None:
            asha = {k: v for k, v in (suite.search.get("asha") or {}).items() if k != "max_t"}
            # past the longest run: a trial that reaches its last epoch ends by itself, not by the scheduler
            max_t = max(t.spec.config.epochs for t in todo) + 1
            tune_cfg["scheduler"] = CellASHA(metric=suite.search.get("metric", "test_top1"),
                                             mode=suite.search.get("mode", "max"), max_t=max_t, **asha)
    trainable = tune.with_resources(_trial_fn, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    watch = _StoreWatch(uri, log)
    from bench.exec.ray_tune import SuiteProgress, expected_trials

    progress = SuiteProgress(expected_trials(len(todo), suite.search),
                             # only a scheduler stops trials early: without one every trial ends
                             epochs={t.key: t.spec.config.epochs for t in todo} if "scheduler" in tune_cfg
                             else None)
    tuner = tune.Tuner(
        trainable, param_space=space, tune_config=tune.TuneConfig(**tune_cfg),
        run_config=tune.RunConfig(
            name=f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(results / "ray"),
            failure_config=tune.FailureConfig(max_failures=2), stop=watch.stopper(),
            callbacks=[watch.callback(), progress],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0))
    log(f"suite {suite.name}: {len(todo)} trial(s) on Ray ({cpus_per_trial} CPU, {gpus_per_trial} GPU each); "
        f"tracking {uri}")
    grid = tuner.fit()
    del grid


def _fit_local(suite: Suite, todo: list, ctx: dict[str, Any], max_concurrent: int | None, log) -> None:
    """Run ``todo`` on this machine without Ray (bench.exec.local): start-up paid once, not per trial."""
    from bench.exec.local import run_local
    from bench.progress import SuiteLines

    workers = local_workers(ctx["cpus_per_trial"], ctx["gpus_per_trial"], max_concurrent, len(todo))
    where = "in this process" if workers == 1 else f"in {workers} worker processes"
    log(f"suite {suite.name}: {len(todo)} trial(s) on this machine {where} ({ctx['cpus_per_trial']} CPU"
        f"{', ' + format(ctx['gpus_per_trial'], 'g') + ' GPU' if ctx['gpus_per_trial'] else ''} each); "
        f"tracking {ctx['tracking_uri']}")
    run_local([_absolute_data_root(t.as_dict()) for t in todo], ctx, workers, SuiteLines(len(todo)),
              _StoreWatch(ctx["tracking_uri"], log))


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


def _absolute_data_root(trial: dict[str, Any]) -> dict[str, Any]:
    """Trials run in Ray's working folder, not the driver's: a relative data root is made absolute here."""
    root = trial["spec"].config.data_root
    if root:
        trial = {**trial, "spec": trial["spec"].with_execution(data_root=str(Path(root).expanduser().resolve()))}
    return trial


# -- checks before anything starts ------------------------------------------------------------------------
def check_arguments(cpus_per_trial: Any, gpus_per_trial: Any, max_concurrent: Any, address: str | None) -> None:
    """The command-line numbers, against what this machine has (a cluster is checked once joined)."""
    if isinstance(cpus_per_trial, bool) or not isinstance(cpus_per_trial, int) or cpus_per_trial < 1:
        raise BinbenchError(f"--cpus-per-trial must be an integer >= 1, got {cpus_per_trial!r}")
    if isinstance(gpus_per_trial, bool) or not isinstance(gpus_per_trial, (int, float)) or not gpus_per_trial >= 0:
        raise BinbenchError(f"--gpus-per-trial must be >= 0, got {gpus_per_trial!r}")
    if gpus_per_trial > 1 and not float(gpus_per_trial).is_integer():
        raise BinbenchError(f"--gpus-per-trial above 1 must be a whole number, got {gpus_per_trial!r}")
    if max_concurrent is not None and (isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)
                                       or max_concurrent < 1):
        raise BinbenchError(f"--max-concurrent must be an integer >= 1, got {max_concurrent!r}")
    check_address(address)
    if address:
        return
    cpus = os.cpu_count() or 1
    if cpus_per_trial > cpus:
        raise BinbenchError(f"--cpus-per-trial {cpus_per_trial} is more than this machine's {cpus} CPU(s): a trial "
                            f"would wait forever; give --cpus-per-trial {cpus} or less (or --address a cluster)")
    if gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
        if gpus_per_trial > gpus:
            raise BinbenchError(f"--gpus-per-trial {gpus_per_trial:g} but this machine has {gpus} GPU(s) torch can "
                                f"use: a trial would wait forever; give --gpus-per-trial "
                                f"{'0' if not gpus else f'{gpus} or less'}")


def check_address(address: str | None) -> None:
    if address is None:
        return
    if address == "auto":
        return
    hp = address.split("://", 1)[1] if address.startswith("ray://") else address
    host, sep, port = hp.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BinbenchError(f"--address must be auto or HOST:PORT (ray://HOST:PORT for Ray Client), got {address!r}")


def probe_address(address: str, timeout: float = 3.0) -> None:
    """A Ray head that does not answer is reported in seconds (ray.init would print warnings for minutes)."""
    import socket

    if address == "auto":
        if not os.environ.get("RAY_ADDRESS") and not Path("/tmp/ray/ray_current_cluster").exists():
            raise BinbenchError("--address auto found no running Ray cluster on this machine (no RAY_ADDRESS, no "
                                "/tmp/ray/ray_current_cluster): start one with `ray start --head` or give HOST:PORT")
        return
    hp = address.split("://", 1)[1] if address.startswith("ray://") else address
    host, _, port = hp.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise BinbenchError(f"no Ray cluster answers at {address} ({why} within {timeout:g} s): start its head with "
                            f"`ray start --head --port {port}` or fix --address") from None


def check_results_dir(results_dir: str | os.PathLike) -> Path:
    """The results folder: created if missing; a file, or a folder this user cannot write, is an error."""
    p = Path(results_dir).expanduser()
    try:
        p = p.resolve()
        if p.exists() and not p.is_dir():
            raise BinbenchError(f"results folder {p} is a file, not a folder: pass --results-dir a folder (it is "
                                "created if missing)")
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BinbenchError(f"cannot create results folder {p}: {exc.strerror or exc}: pass --results-dir a "
                            "folder you can write") from None
    if not os.access(p, os.R_OK | os.W_OK | os.X_OK):
        raise BinbenchError(f"results folder {p} is not readable and writable by you: fix its permissions or pass "
                            "another --results-dir")
    return p


def check_trial_data(suite: Suite) -> None:
    """A data root a suite's defaults (or overrides) set must exist where the trials will read it."""
    from bench.data import dataset_source
    from bench.errors import DataNotFoundError

    seen: set[tuple[str, str]] = set()
    for t in suite.trials:
        root = t.config.get("data_root")
        if not root or (t.dataset, root) in seen:
            continue
        seen.add((t.dataset, root))
        path = Path(root).expanduser().resolve()
        if not path.is_dir():
            raise BinbenchError(f"data_root {root!r} of trial {t.label} ({path}) is not a folder: fix data_root in "
                                f"{suite.path} or pass --data-root")
        if t.config.get("download"):
            continue
        try:
            dataset_source(t.dataset, str(path))
        except DataNotFoundError as exc:
            raise BinbenchError(f"trial {t.label}: {exc}") from None


# -- one suite execution per results folder -----------------------------------------------------------------
LOCK_NAME = ".binbench.lock"


def _holder_text() -> str:
    import socket

    return (f"pid {os.getpid()} on host {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")


@contextlib.contextmanager
def results_lock(results: Path, suite_name: str):
    """Hold ``<results>/.binbench.lock`` for the execution: a second one into the same folder is refused at once.

    An fcntl lock: the kernel releases it when the holding process dies (SIGKILL included), so a crashed run never
    blocks the folder; the file keeps who holds it for the message.
    """
    import fcntl
    import json

    path = results / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise BinbenchError(f"cannot create the lock file {path}: {exc.strerror}: pass --results-dir a folder you "
                            "can write") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            held = json.loads(os.read(fd, 4096).decode() or "{}")
        except (OSError, ValueError):
            held = {}
        os.close(fd)
        who = held.get("holder", "another process")
        raise BinbenchError(f"results folder {results} is in use by `binbench suite run` of suite "
                            f"{held.get('suite', '?')!r} ({who}); wait for it to end, stop it, or pass another "
                            "--results-dir") from None
    except OSError as exc:  # a file system without locks: say so rather than risk two writers
        os.close(fd)
        raise BinbenchError(f"cannot lock {path} ({exc.strerror}): this file system has no file locks; use a "
                            "results folder on one that has (NFSv4, a local disk)") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"suite": suite_name, "pid": os.getpid(), "holder": _holder_text()}).encode())
        os.fsync(fd)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the lock
