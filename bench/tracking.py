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
from pathlib import Path
from typing import Any

KIND_TAG, KEY_TAG, STATUS_TAG = "binbench.kind", "binbench.key", "binbench.status"


def default_tracking_uri(results_dir: str | os.PathLike) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def _client(uri: str):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def prepare(uri: str, suite: str, artifact_root: str | None = None) -> str:
    """Create the store and the suite's experiment once, in the driver; return the experiment id."""
    client = _client(uri)
    exp = client.get_experiment_by_name(suite)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(suite, artifact_location=artifact_root)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)
    return out


def start_parent(uri: str, exp_id: str, suite: str, tags: dict[str, str]) -> str:
    client = _client(uri)
    run = client.create_run(exp_id, run_name=f"{suite} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                            tags={KIND_TAG: "suite", **tags})
    return run.info.run_id


def end_run(uri: str, run_id: str, status: str = "FINISHED", tags: dict[str, str] | None = None) -> None:
    client = _client(uri)
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, v)
    client.set_terminated(run_id, status)


def finished_keys(uri: str, exp_id: str) -> set[str]:
    """Keys of trials that already ended (finished or diverged): a resumed suite does not run them again."""
    runs = trial_runs(uri, exp_id)
    return {r.data.tags[KEY_TAG] for r in runs
            if r.info.status == "FINISHED" or r.data.tags.get(STATUS_TAG) == "diverged"}


def trial_runs(uri: str, exp_id: str, status: str | None = None) -> list:
    client = _client(uri)
    flt = f"tags.`{KIND_TAG}` = 'trial'"
    if status:
        flt += f" and attributes.status = '{status}'"
    out, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=flt, max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def kill_stale(uri: str, exp_id: str, keys: set[str]) -> int:
    """Mark runs left RUNNING by a killed driver as KILLED (their trials are about to run again)."""
    client = _client(uri)
    n = 0
    for r in trial_runs(uri, exp_id, status="RUNNING"):
        if r.data.tags.get(KEY_TAG) in keys:
            client.set_tag(r.info.run_id, STATUS_TAG, "interrupted")
            client.set_terminated(r.info.run_id, "KILLED")
            n += 1
    return n


class TrialRun:
    """The child run of one trial, written from inside the trial process."""

    def __init__(self, uri: str, exp_id: str, parent_id: str | None, trial: dict[str, Any], tags: dict[str, str]):
        from mlflow.entities import Param, RunTag

        self.client = _client(uri)
        self.Param, self.RunTag = Param, RunTag
        base = {KIND_TAG: "trial", KEY_TAG: trial["key"], "suite": trial["suite"], "estimator": trial["estimator"],
                "recipe": trial["recipe"], "model": trial["model"], "dataset": trial["dataset"], "bits": trial["bits"],
                "seed": str(trial["seed"]), "cell": trial["cell"], STATUS_TAG: "running", **tags}
        if parent_id:
            base["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(exp_id, run_name=trial["label"], tags=base)
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)
