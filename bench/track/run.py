"""One tracked run: the MLflow run of a training, from its start to its end, for ``binbench run`` and for every
suite trial alike (:func:`tracked_run`).

The run is created with its identity tags (``bench.spec.RunIdentity``), the environment it runs in and the
caller's tags, gets the experiment as params and the execution as ``exec.*`` tags, per-epoch metrics while it
trains, and at its end the closing metrics, tags and record (``bench.track.record``). How it ends is decided
here once: FINISHED (or FAILED for a diverged result), KILLED and ``interrupted`` for a Ctrl-C or a stopped
worker, KILLED and ``stopped`` for a trial a search's scheduler ended, FAILED with the error for anything else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from bench.spec import RunIdentity, RunSpec
from bench.track import record, store

#: at most this often a run writes its epochs' metrics (and at its end)
FLUSH_S = 5.0


class MlflowRun:
    """An MLflow run, written in batches (one write per metric per step is ~30x slower)."""

    def __init__(self, uri: str, exp_id: str, parent_id: str | None, identity: RunIdentity, tags: Mapping[str, str]):
        self.client = store.mlflow_client(uri)
        base = {store.KIND_TAG: "trial", store.KEY_TAG: identity.key, store.SUITE_TAG: identity.suite,
                store.ESTIMATOR_TAG: identity.estimator, store.RECIPE_TAG: identity.recipe,
                store.MODEL_TAG: identity.model, store.DATASET_TAG: identity.dataset, store.BITS_TAG: identity.bits,
                store.SEED_TAG: str(identity.seed), store.CELL_TAG: identity.cell, store.STATUS_TAG: "running",
                **store.environment_tags(),
                **({store.BUDGET_TAG: f"{identity.budget:g}"} if identity.budget is not None else {}), **tags}
        if parent_id:
            base["mlflow.parentRunId"] = parent_id
        self.run_id = self.client.create_run(exp_id, run_name=identity.label, tags=base).info.run_id
        if store.ATTEMPT_TAG in base:
            store.end_earlier_attempts(self.client, exp_id, parent_id, base[store.ATTEMPT_TAG], self.run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k[:250], v[:6000]) for k, v in store.flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        self.log_steps([(metrics, step)])

    def log_steps(self, steps: list[tuple[Mapping[str, Any], int]]) -> None:
        """Several steps' metrics in as few writes as MLflow allows (1000 values per batch)."""
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for metrics, step in steps for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class TrackedRun:
    """What a training reports into its run: ``on_epoch`` as a ``train`` callback, ``final_model`` as a stage
    hook, and :meth:`finish` with the result."""

    def __init__(self, run: MlflowRun, spec: RunSpec):
        self.run, self.config, self.key = run, spec.config.to_dict(), spec.key
        self.final_model = record.FinalModel()
        self.logged: set[int] = set()
        self.pending: list[tuple[dict[str, Any], int]] = []
        self.flushed = -float("inf")  # the first epoch is written at once: a watcher sees the run train
        self.monitor: Any = None
        self.ended = False

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        """An epoch's metrics, written at most every ``FLUSH_S`` seconds (each write costs ~10 ms of SQLite, as
        long as a short epoch). What a crash loses is in the run's checkpoint: its next attempt logs it."""
        step = int(metrics["global_epoch"])
        self.pending.append((metrics, step))
        self.logged.add(step)
        if time.monotonic() - self.flushed >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write the epochs' metrics not yet written."""
        if self.pending:
            self.run.log_steps(self.pending)
            self.pending = []
        self.flushed = time.monotonic()

    def finish(self, res: Any) -> None:
        """End the run with a training's result: the epochs a checkpoint restored (their metrics belong in this
        run too), the closing metrics and tags, the record; FINISHED, or FAILED for a diverged run."""
        record.stop_system_metrics(self.monitor)
        self.pending += [(m, int(m["global_epoch"])) for m in res.history if int(m["global_epoch"]) not in self.logged]
        self.pending.append((record.final_metrics(res), len(res.history)))
        self.flush()
        self.run.set_tags(record.final_tags(res))
        # a run resumed after it had finished trains no stage now: its weights are in the checkpoint folder
        ckpt = Path(self.config["checkpoint_dir"]) / "model.pt" if self.config.get("checkpoint_dir") else None
        weights = self.final_model.state_dict(ckpt)
        record.log_run_record(self.run.client, self.run_id, self.config, res, weights,
                              self.final_model.latent_histogram(len(res.history)))
        from bench.export.tracked import log_export  # the export's modules load only where a run ends

        log_export(self.run.client, self.run_id, self.config, res, weights, self.key)  # the deployable network
        self.run.end("FINISHED" if res.status == "finished" else "FAILED")
        self.ended = True

    def abort(self, status: str, mlflow_status: str, error: str | None = None) -> None:
        """End a run that has no result (nothing happens to one that already ended with its result)."""
        if self.ended:  # a packed member that ended (diverged, left its pack) keeps its result when the pack fails
            return
        with contextlib.suppress(Exception):  # the epochs it trained, as far as the store still answers
            self.flush()
        record.stop_system_metrics(self.monitor)
        self.run.set_tags({store.STATUS_TAG: status, **({store.ERROR_TAG: error} if error else {})})
        self.run.end(mlflow_status)
        self.ended = True


@contextlib.contextmanager
def tracked_run(uri: str, exp_id: str, identity: RunIdentity, spec: RunSpec, tags: Mapping[str, str],
                parent_id: str | None = None, system_metrics: bool = True) -> Iterator[TrackedRun]:
    """The run of one training: the caller trains inside the block and calls ``finish(result)``; whatever
    leaves the block otherwise ends the run as what it was (see the module's docstring) and propagates.
    ``system_metrics``: sample the machine's CPU, memory (and GPU) into this run; a pack samples them once, into
    one member's run, since its members share one process."""
    tracked = TrackedRun(MlflowRun(uri, exp_id, parent_id, identity, {**store.code_tags(spec), **tags}), spec)
    try:
        params, exec_tags = record.split_config(tracked.config)
        tracked.run.log_params(params)
        tracked.run.set_tags(exec_tags)
        tracked.monitor = record.start_system_metrics(tracked.run_id, uri) if system_metrics else None
        yield tracked
    except SystemExit:  # Ray ends a trial its scheduler stops (ASHA) this way: not a failure, not a result
        tracked.abort("stopped", "KILLED")
        raise
    except KeyboardInterrupt:  # Ctrl-C (or a local executor stopping its workers): interrupted, not failed
        tracked.abort("interrupted", "KILLED")
        raise
    except BaseException as exc:
        tracked.abort("failed", "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    if not tracked.ended:  # a caller bug: the block ended without a result; never leave the run RUNNING
        tracked.abort("failed", "FAILED", "the run ended without a result")


def single_run(uri: str, spec: RunSpec) -> contextlib.AbstractContextManager[TrackedRun]:
    """The tracked run of one ``binbench run``, in the store's ``binbench-run`` experiment."""
    record.quiet_mlflow()
    db = store.sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    exp_id = store.prepare(uri, record.RUN_EXPERIMENT, record.artifact_root(uri))
    return tracked_run(uri, exp_id, RunIdentity.of(spec), spec, {store.KIND_TAG: "run"})
