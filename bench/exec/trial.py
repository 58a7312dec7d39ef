"""One suite trial, whatever runs it: a Ray Tune trainable (bench.exec.driver) or a local worker (bench.exec.local).

``run_trial`` is the whole trial body: the trial's spec (resolved once when the suite was expanded; a search
point's values resolve it again), the trial's MLflow run (tags, params, metrics, records),
its checkpoint folder under ``<results>/checkpoints/<key>/`` with the "execution" marker that tells a retry within
this execution (continue from the checkpoints) from a fresh execution (train from scratch unless ``--resume``).
The executor only supplies how metrics are reported and, for Ray, a checkpoint Ray restored.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.track.store import TRIAL_TAG


def run_trial(trial: dict[str, Any], ctx: dict[str, Any], report: Callable[[dict[str, Any]], None] | None = None,
              *, sampled: dict[str, Any] | None = None, restored: Any = None,
              tags: dict[str, str] | None = None) -> str:
    """Train one trial, tracked in MLflow; return its status ("finished" or "diverged").

    ``report`` gets each epoch's numeric metrics (Ray: ``tune.report``); ``sampled`` holds search-space values
    (Ray only); ``restored`` is a checkpoint Ray restored on a retry (anything with ``as_directory()``); ``tags``
    are executor-specific run tags (Ray's node). An exception ends the run FAILED and propagates: the executor
    decides whether to retry; Ctrl-C ends it KILLED.
    """
    import torch

    spec = trial["spec"].with_values(**sampled) if sampled else trial["spec"]
    cpus = int(ctx["cpus_per_trial"])
    torch.set_num_threads(cpus)
    ckpt_dir = Path(ctx["results_dir"]) / "checkpoints" / spec.key  # the run's key: one folder per search point
    continued = _prepare_checkpoints(ckpt_dir, ctx, restored)
    execution: dict[str, Any] = {"threads": cpus, "checkpoint_dir": str(ckpt_dir), "resume": True}
    if ctx.get("gpus_per_trial", 0) == 0 and spec.config.device == "auto":
        execution["device"] = "cpu"
    spec = spec.with_execution(**execution)
    os.environ.update(ctx.get("mlflow_env", {}))  # a lost tracking server fails the trial in seconds, not minutes
    run = _open_run({**trial, "key": spec.key}, ctx, spec, ckpt_dir, continued, {TRIAL_TAG: trial["key"],
                                                                                 **(tags or {})})
    return _train_tracked(run, ctx["tracking_uri"], spec, ckpt_dir, report)


def _prepare_checkpoints(ckpt_dir: Path, ctx: dict[str, Any], restored: Any) -> bool:
    """Clear or keep the trial's checkpoint folder, mark it as this execution's; True when training continues."""
    # which execution wrote the checkpoints: a retry within this one (a lost node or worker, possibly before Tune
    # registered its checkpoint) continues from them, a fresh execution trains from scratch
    marker = ckpt_dir / "execution"
    same_execution = marker.exists() and marker.read_text() == str(ctx["parent_run_id"])
    if not ctx["resume"] and restored is None and not same_execution and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # only --resume (or a retry) continues old checkpoints
    if restored is not None and not (ckpt_dir / "last.pt").exists():
        with restored.as_directory() as d:
            if (Path(d) / "last.pt").exists():
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(Path(d) / "last.pt", ckpt_dir / "last.pt")
    continued = (ckpt_dir / "last.pt").exists()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(ctx["parent_run_id"]))
    return continued


def _open_run(trial: dict[str, Any], ctx: dict[str, Any], spec: Any, ckpt_dir: Path, continued: bool,
              extra: dict[str, str]):
    """The trial's MLflow child run, tagged with where and how it runs."""
    import socket

    from bench.env import describe
    from bench.track import store as tg

    info = describe()
    tags = {tg.RESULTS_TAG: ctx["results_dir"], tg.ATTEMPT_TAG: ckpt_dir.name,
            "worker": f"pid {os.getpid()} on host {socket.gethostname()}", **extra,
            "continued_from_checkpoint": str(continued).lower(), tg.COMMIT_TAG: info["git_commit"],
            **{f"version.{k}": v for k, v in info["versions"].items()},
            **{f"hardware.{k}": v for k, v in info["hardware"].items()}, "w_bits": str(spec.config.w_bits),
            "a_bits": str(spec.config.a_bits), tg.ROLE_TAG: _role(trial["estimator"])}
    return tg.TrialRun(ctx["tracking_uri"], ctx["experiment_id"], ctx["parent_run_id"], trial, tags)


def _train_tracked(run, uri: str, spec: Any, ckpt_dir: Path,
                   report: Callable[[dict[str, Any]], None] | None) -> str:
    """Train with per-epoch metrics into the run; end the run as training ended."""
    from bench.track import record as recording
    from bench.track.store import ERROR_TAG, STATUS_TAG
    from bench.train import train

    logged: set[int] = set()

    def on_epoch(record: dict[str, Any]) -> None:
        step = int(record["global_epoch"])
        run.log_metrics(record, step)
        logged.add(step)
        # metrics only: the checkpoints stay in the trial's own folder (one copy; a retry within this execution
        # continues from it, see the "execution" marker), not copied to Ray every epoch
        if report is not None:
            report({k: v for k, v in record.items() if isinstance(v, (int, float)) and "/" not in k})

    final_model = recording.FinalModel()
    monitor = None
    try:
        resolved = spec.config.to_dict()
        params, exec_tags = recording.split_config(resolved)
        run.log_params(params)
        run.set_tags(exec_tags)
        monitor = recording.start_system_metrics(run.run_id, uri)
        res = train(spec, callbacks=[on_epoch], stage_hooks=[final_model])
        recording.stop_system_metrics(monitor)
    except SystemExit:  # Ray ends a trial its scheduler stops (ASHA) this way: not a failure, not a result
        recording.stop_system_metrics(monitor)
        run.set_tags({STATUS_TAG: "stopped"})
        run.end("KILLED")
        raise
    except KeyboardInterrupt:  # Ctrl-C (or a local executor stopping its workers): interrupted, not failed
        recording.stop_system_metrics(monitor)
        run.set_tags({STATUS_TAG: "interrupted"})
        run.end("KILLED")
        raise
    except BaseException as exc:
        recording.stop_system_metrics(monitor)
        run.set_tags({STATUS_TAG: "failed", ERROR_TAG: f"{type(exc).__name__}: {exc}"})
        run.end("FAILED")
        raise
    for record in res.history:  # epochs restored from a checkpoint: their metrics belong in this run too
        if int(record["global_epoch"]) not in logged:
            run.log_metrics(record, int(record["global_epoch"]))
    run.log_metrics(recording.final_metrics(res), len(res.history))
    run.set_tags(recording.final_tags(res))
    recording.log_run_record(run.client, run.run_id, resolved, res, final_model.state_dict(ckpt_dir / "model.pt"),
                             final_model.latent_histogram(len(res.history)))
    run.end("FINISHED" if res.status == "finished" else "FAILED")
    return res.status


def _role(estimator: str) -> str:
    """How tables treat a trial: "baseline" (the FP network), "control" or "method" (the estimator's role)."""
    from bench.estimator import get_estimator_class
    from bench.suite import FP

    return "baseline" if estimator == FP else get_estimator_class(estimator).role
