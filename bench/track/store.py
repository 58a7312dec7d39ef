"""MLflow tracking for suites: one parent run per suite execution, one child run per trial.

The SQLite store is created by the driver before any trial starts (concurrent first-time creation corrupts
it); trials then open it with an explicit URI and experiment id. Metrics are written once per epoch in one
batch (one write per metric per step is ~30x slower). Every trial run carries an idempotency key
(``binbench.key``) so that a resumed or repeated suite never counts a trial twice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KIND_TAG, KEY_TAG, STATUS_TAG = "binbench.kind", "binbench.key", "binbench.status"
#: the grid trial a run belongs to (its spec's key before a search point's values were applied): what
#: ``--resume`` skips once ended; equal to the run's key outside a search. Older stores lack it: their key is.
TRIAL_TAG = "binbench.trial"
PACK_TAG, PACK_SIZE_TAG = "binbench.pack", "binbench.pack_size"  # the pack a suite trial trained in (its id, size)
#: on a packed member without system metrics: the key of the member whose run holds its process's (one process)
SYSTEM_METRICS_TAG = "binbench.system_metrics_in"
#: a suite execution's shape (tags of its parent run): how many packs its trials trained in, on how many local workers
PACKS_TAG, WORKERS_TAG = "binbench.packs", "binbench.workers"
#: the run's code (``RunSpec.code``, a digest of its estimators' sources) and each estimator's origin by role
CODE_TAG, ORIGIN_TAG_PREFIX = "binbench.code", "binbench.origin."
BUDGET_TAG = "binbench.budget"  # the share of its cell's epochs a run of a suite with ``budgets`` trained
#: the results folder a run belongs to, and one trial attempt's identity (its checkpoint folder's name)
RESULTS_TAG, ATTEMPT_TAG = "binbench.results_dir", "binbench.attempt"
#: tags every trial run carries (``TrialRun``), named once here and read by reports
ESTIMATOR_TAG, MODEL_TAG, DATASET_TAG, BITS_TAG, RECIPE_TAG, SEED_TAG = (
    "estimator", "model", "dataset", "bits", "recipe", "seed")
SUITE_TAG, CELL_TAG, ROLE_TAG = "suite", "cell", "role"
#: tags of what a run came to and where it came from (``bench.track.record.final_tags``, the executors)
HEADLINE_TAG, STAGE_EPOCHS_TAG, DATA_SOURCE_TAG = "headline_mode", "stage_epochs", "dataset_source"
COMMIT_TAG, COMMAND_TAG, ERROR_TAG, MESSAGE_TAG = "git_commit", "command", "error", "message"
#: MLflow's HTTP retries for a suite: its defaults (7 retries, backoff factor 2, 120 s timeout) wait minutes
#: on a dead server; these give up in about 10 s, and a failed trial is continued by ``--resume``
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
#: for the first contact: one try, a short timeout
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


SQLITE = "sqlite:///"


def sqlite_uri(path: str | os.PathLike) -> str:
    """The tracking URI of the SQLite store at ``path`` (made absolute: trials run in other working folders)."""
    return f"{SQLITE}{Path(path).expanduser().resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI, None for any other store (a server, an in-memory database)."""
    if not uri.startswith(SQLITE) or uri[len(SQLITE):] in ("", ":memory:"):
        return None
    return Path(uri[len(SQLITE):])


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative SQLite path made absolute (the trials do not run in the driver's folder)."""
    db = sqlite_path(uri)
    return sqlite_uri(db) if db is not None else uri


def default_tracking_uri(results_dir: str | os.PathLike) -> str:
    return sqlite_uri(Path(results_dir) / "mlflow.db")


# -- where binbench writes by default ---------------------------------------------------------------------------
#: a user's own runs, under the current folder (git-ignored in a checkout): ``binbench run`` records into
#: ``runs/mlflow.db`` (its artifacts in ``runs/artifacts/``), a suite into ``runs/<suite>/`` (its store,
#: checkpoints, Ray files and report), so a checkout's committed ``results/`` never changes under a user's runs.
USER_RUNS = Path("runs")
#: the committed reference results (``results/<suite>``): read where a command is pointed at them
#: (``--results-dir results/<suite>``), never written by default
REFERENCE_RESULTS = Path("results")
STORE_FILE = "mlflow.db"


def suite_folder(suite: str) -> Path:
    """The default results folder of a suite: ``runs/<suite>`` under the current folder."""
    return USER_RUNS / suite


def run_store_file() -> Path:
    """The default store of ``binbench run``: ``runs/mlflow.db`` under the current folder."""
    return USER_RUNS / STORE_FILE


def reference_hint(suite: str) -> str:
    """"; the committed reference results: --results-dir results/<suite>" where such a store exists here."""
    ref = REFERENCE_RESULTS / suite
    return f"; the committed reference results: --results-dir {ref}" if (ref / STORE_FILE).is_file() else ""


def known_stores() -> list[Path]:
    """The SQLite stores under the current folder that commands naming a run look in: ``binbench run``'s, the
    user's suites' (``runs/*/``), then the committed reference results' (``results/*/``, only read)."""
    suites = sorted(USER_RUNS.glob(f"*/{STORE_FILE}")) + sorted(REFERENCE_RESULTS.glob(f"*/{STORE_FILE}"))
    return [p for p in [run_store_file(), *suites] if p.is_file()]


def artifact_folder(uri: str, run: Any) -> Path | None:
    """The local folder holding a run's artifacts (it may not exist), or None where a tracking server keeps them.

    MLflow records a run's artifact location as an absolute path of the machine that made the store, and binbench
    lays a store's artifacts out beside it (``<results>/artifacts/<run id>/artifacts`` next to
    ``<results>/mlflow.db``). Where the recorded folder does not exist here (a store copied from another machine,
    or a results folder moved), the same path is looked for relative to the store's folder: the longest tail of
    the recorded path, from the run's own folder on, that exists under it."""
    from urllib.parse import unquote, urlparse

    u = urlparse(run.info.artifact_uri)
    if u.scheme not in ("", "file"):
        return None
    recorded = Path(unquote(u.path))
    db = sqlite_path(uri)
    if recorded.is_dir() or db is None or run.info.run_id not in recorded.parts:
        return recorded
    parts = recorded.parts
    for k in range(1, parts.index(run.info.run_id) + 1):  # longest tail first, each holding the run's folder
        here = db.parent.joinpath(*parts[k:])
        if here.is_dir():
            return here
    return recorded


def read_artifact(uri: str, run_id: str, path: str) -> bytes | None:
    """One artifact of a run, from its local folder (:func:`artifact_folder`: a copied store's too) or downloaded
    from a tracking server; None when the run has none of that name (or its artifacts are not here)."""
    import tempfile

    client = mlflow_client(uri)
    folder = artifact_folder(uri, client.get_run(run_id))
    if folder is not None:
        f = folder / path
        return f.read_bytes() if f.is_file() else None
    parent = str(Path(path).parent)
    if path not in [a.path for a in client.list_artifacts(run_id, None if parent == "." else parent)]:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_bytes()


def __getattr__(name: str) -> Any:
    # MLflow's client and error classes for modules outside bench.track (the report): imported on first use, as
    # importing MLflow takes seconds and the fast CLI paths never need it
    if name == "MlflowClient":
        from mlflow.tracking import MlflowClient

        return MlflowClient
    if name == "MlflowException":
        from mlflow.exceptions import MlflowException

        return MlflowException
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mlflow_client(uri: str) -> Any:
    """The MLflow client of a store: every binbench module asks here."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


#: what MLflow 3's UI reads to pick an experiment's view: without it an experiment with no runs yet opens in the
#: GenAI view (traces, tokens, cost). ``custom_model_development`` is its "Machine learning" kind, the view of
#: training runs (MLflow's ``ExperimentKind`` in its UI code; its onboarding skill names the tag and both values)
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
DEFAULT_EXPERIMENT = "0"  # MLflow's "Default" experiment, which its SQL store creates with every new store


def prepare(uri: str, suite: str, artifact_root: str | None = None) -> str:
    """Create the store and the suite's experiment once, in the driver; return the experiment id. The experiment
    is marked as one of training runs for MLflow's UI, and a new SQLite store gets no empty "Default" one."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(suite)
    if exp is None:
        exp_id = client.create_experiment(suite, artifact_location=artifact_root,
                                          tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    else:
        exp_id = exp.experiment_id
        if exp.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:  # a store made by an older binbench
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    _retire_default_experiment(client, uri)
    return exp_id


def _retire_default_experiment(client: Any, uri: str) -> None:
    """Delete MLflow's empty "Default" experiment from a SQLite store, so its UI lists binbench's experiments only.

    It can only be deleted, not removed: MLflow's SQL store re-creates experiment 0 whenever it opens a store that
    lacks it (``SqlAlchemyStore._initialize_store_state``), which would also write into a store opened only to be
    read. A deleted experiment is still there for that check and hidden from the UI and searches. A tracking
    server's Default experiment, or one holding runs, belongs to others and stays."""
    if sqlite_path(uri) is None:
        return
    exp = client.get_experiment(DEFAULT_EXPERIMENT)
    if exp is None or exp.lifecycle_stage != "active" or exp.name != "Default":
        return
    from mlflow.entities import ViewType

    if not client.search_runs([DEFAULT_EXPERIMENT], max_results=1, run_view_type=ViewType.ALL):
        client.delete_experiment(DEFAULT_EXPERIMENT)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)
    return out


def source_tags(git_commit: str | None) -> dict[str, str]:
    """MLflow's own ``mlflow.source.*`` and ``mlflow.user`` tags, so MLflow's UI and API show where a run came
    from as they do for their own runs."""
    import getpass

    tags = {"mlflow.source.name": "binbench", "mlflow.source.type": "LOCAL"}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment (some containers)
        pass
    if git_commit and git_commit != "unknown":
        tags["mlflow.source.git.commit"] = git_commit
    return tags


def environment_tags() -> dict[str, str]:
    """Where and with what a run ran: the git commit, package versions, hardware, and MLflow's own source tags.
    Every run carries them: a suite's parent run, its trials, and ``binbench run``."""
    from bench.env import describe

    info = describe()
    return {COMMIT_TAG: str(info["git_commit"]), **{f"version.{k}": v for k, v in info["versions"].items()},
            **{f"hardware.{k}": v for k, v in info["hardware"].items()}, **source_tags(str(info["git_commit"]))}


#: a suite execution's counts: how many trials it has and submits (params of its parent run, known as it starts)
#: and what they came to (metrics, logged as it ends); tags too, as older stores and readers have them
PLANNED_COUNTS = ("trials", "submitted")
OUTCOME_COUNTS = ("finished", "diverged", "failed", "unfinished")


def start_parent(uri: str, exp_id: str, suite: str, tags: dict[str, str]) -> str:
    from mlflow.entities import Param

    client = mlflow_client(uri)
    run = client.create_run(exp_id, run_name=f"{suite} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                            tags={KIND_TAG: "suite", **environment_tags(), **tags})
    params = [Param(k, str(tags[k])) for k in PLANNED_COUNTS if k in tags]
    if params:
        client.log_batch(run.info.run_id, params=params)
    return run.info.run_id


def end_run(uri: str, run_id: str, status: str = "FINISHED", tags: dict[str, str] | None = None) -> None:
    """End a run (a suite execution's parent) with its closing tags; the outcome counts among them are logged as
    metrics too."""
    from mlflow.entities import Metric, RunTag

    client = mlflow_client(uri)
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in (tags or {}).items() if k in OUTCOME_COUNTS]
    client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
    client.set_terminated(run_id, status)


def log_values(client: Any, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
    """Metrics (step 0) and tags of a run in one write (one write per value costs ~10 ms each on SQLite)."""
    from mlflow.entities import Metric, RunTag

    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def run_status(run: Any) -> str:
    """What a trial run came to: finished, diverged (a result: the loss became NaN/inf), failed, stopped (by
    a search's scheduler), interrupted, or running. The one reading of MLflow's status and binbench's tag."""
    tag = run.data.tags.get(STATUS_TAG, "")
    if run.info.status == "FINISHED":
        return "finished"
    if tag == "diverged":
        return "diverged"
    if run.info.status == "FAILED":
        return "failed"
    if run.info.status == "RUNNING":
        return "running"
    return "stopped" if tag == "stopped" else "interrupted"


ENDED = ("finished", "diverged")  # statuses that are results: counted by reports, skipped by --resume


def trial_of(run: Any) -> str | None:
    """The grid trial key of a run (older stores: its key)."""
    return run.data.tags.get(TRIAL_TAG) or run.data.tags.get(KEY_TAG)


def finished_keys(uri: str, exp_id: str, codes: dict[str, str] | None = None) -> set[str]:
    """Grid trial keys that already ended (finished or diverged): a resumed suite does not run them again. With
    ``codes`` (trial key -> ``RunSpec.code``), only runs of the same estimator code count: a trial whose
    estimator changed since (or that ran before the code was recorded) is trained again."""
    return {k for r in trial_runs(uri, exp_id) if run_status(r) in ENDED
            if (k := trial_of(r)) and (codes is None or r.data.tags.get(CODE_TAG) == codes.get(k))}


def code_tags(spec: Any) -> dict[str, str]:
    """``binbench.code`` and the origin (package, version, source digest) of each estimator of a resolved run."""
    from bench.origin import origin_tags

    return {CODE_TAG: spec.code, **origin_tags(spec.estimators)}


def trial_statuses(uri: str, exp_id: str, keys: list[str]) -> dict[str, str]:
    """Per grid trial key: finished, diverged, failed, unfinished, or missing (no run); an ended run wins."""
    out: dict[str, str] = {}
    wanted = set(keys)
    for r in trial_runs(uri, exp_id):
        k = trial_of(r)
        if k in wanted and out.get(k) not in ENDED:
            st = run_status(r)
            out[k] = st if st in (*ENDED, "failed") else "unfinished"
    for k in keys:
        out.setdefault(k, "missing")
    return out


def trial_runs(uri: str, exp_id: str, status: str | None = None) -> list:
    flt = f"tags.`{KIND_TAG}` = 'trial'"
    if status:
        flt += f" and attributes.status = '{status}'"
    return _search_all(mlflow_client(uri), exp_id, flt)


def _search_all(client, exp_id: str, flt: str) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=flt, max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _kill(client, runs: list, why: str) -> int:
    for r in runs:
        client.set_tag(r.info.run_id, STATUS_TAG, why)
        client.set_terminated(r.info.run_id, "KILLED")
    return len(runs)


def end_stale(uri: str, exp_id: str, results_dir: str, exclusive_store: bool) -> int:
    """Mark KILLED the runs (parent and trials) that a killed driver or trial worker left RUNNING.

    Called with the results folder's lock held, so no live suite writes runs of this folder: every RUNNING run
    of it is stale. ``exclusive_store``: the store belongs to this folder alone (the default SQLite file), so its
    runs from before the folder tag existed count too.
    """
    client = mlflow_client(uri)
    flt = "attributes.status = 'RUNNING'"
    if not exclusive_store:
        flt += f" and tags.`{RESULTS_TAG}` = '{results_dir}'"
    return _kill(client, _search_all(client, exp_id, flt), "interrupted")


def end_children(uri: str, exp_id: str, parent_id: str, why: str = "interrupted") -> int:
    """Mark KILLED the trial runs of one suite execution still RUNNING (their process is gone or stopped)."""
    client = mlflow_client(uri)
    runs = _search_all(client, exp_id, f"attributes.status = 'RUNNING' and tags.`mlflow.parentRunId` = '{parent_id}'")
    return _kill(client, runs, why)


def end_earlier_attempts(client, exp_id: str, parent_id: str | None, attempt: str, keep: str) -> int:
    """In a trial: earlier attempts of it (a worker killed, Ray retried) left RUNNING are marked KILLED."""
    if not parent_id:
        return 0
    runs = _search_all(client, exp_id, f"attributes.status = 'RUNNING' and tags.`mlflow.parentRunId` = "
                                       f"'{parent_id}' and tags.`{ATTEMPT_TAG}` = '{attempt}'")
    return _kill(client, [r for r in runs if r.info.run_id != keep], "worker lost; retried")


def _set_env(values: dict[str, str]) -> dict[str, str | None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    return old


def _restore_env(old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def probe_server(uri: str) -> None:
    """An http(s) tracking URI whose server does not take a connection within 3 s is one BinbenchError line
    (MLflow itself would retry for minutes); other URIs pass."""
    import socket
    from urllib.parse import urlparse

    from bench.errors import BinbenchError

    u = urlparse(uri)
    if u.scheme not in ("http", "https"):
        return
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", port), timeout=3):
            pass
    except OSError as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise BinbenchError(f"tracking server {uri} does not answer ({why}): start it (e.g. `mlflow server "
                            f"--host {u.hostname} --port {port}`) or pass another --tracking-uri") from None


def check_store(uri: str, suite: str, artifact_root: str | None = None) -> str:
    """Reach the tracking store within seconds, create the suite's experiment there; return its id.

    An http(s) server is first probed with a socket and then asked once with a 5 s timeout and no retries (MLflow
    would otherwise retry for minutes); a SQLite file's folder must exist. Any failure is one BinbenchError line.
    """
    from urllib.parse import urlparse

    from bench.errors import BinbenchError

    u = urlparse(uri)
    probe_server(uri)
    if u.scheme == "sqlite":
        db = sqlite_path(uri)
        if db is not None and not db.parent.is_dir():
            raise BinbenchError(f"--tracking-uri {uri}: folder {db.parent} does not exist; create it or pass "
                                "another URI")
        if db is not None and db.exists() and not db.is_file():
            raise BinbenchError(f"--tracking-uri {uri}: {db} is not a file; pass the path of an MLflow SQLite file")
    old = _set_env(PROBE_ENV) if u.scheme in ("http", "https") else {}
    try:
        return prepare(uri, suite, artifact_root)
    except Exception as exc:  # MlflowException, requests' errors, sqlalchemy's: all say the store is unusable
        msg = " ".join(str(exc).split())[:300]
        raise BinbenchError(f"MLflow tracking store {uri} is not usable: {type(exc).__name__}: {msg}; check "
                            "--tracking-uri (or --results-dir) and that the server is an MLflow tracking "
                            "server") from None
    finally:
        _restore_env(old)


def suite_http_env() -> dict[str, str]:
    """MLflow HTTP settings for the driver and the trials: the user's own, else :data:`HTTP_ENV`."""
    return {k: os.environ.get(k, v) for k, v in HTTP_ENV.items()}


class StoreWatch:
    """When a trial fails and the tracking server no longer answers, stop the suite: every further attempt would
    fail the same way. Finished work is kept; ``--resume`` continues once the server is back. Executors ask
    :meth:`check` after a failed attempt and stop handing out trials once :attr:`lost` is set."""

    def __init__(self, uri: str, log: Callable[[str], None] = print):
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
