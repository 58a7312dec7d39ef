"""One suite trial, whatever runs it: the local executor (``bench.exec.local``) or a Ray Tune trainable
(``bench.exec.ray_tune``), each handed :func:`run_trial` by the driver.

``run_trial`` is the whole trial body: the trial's spec (resolved once when the suite was expanded; a search
point's values resolve it again), its tracked MLflow run (``bench.track.run``), its checkpoint folder under
``<results>/checkpoints/<key>/`` with the "execution" marker that tells a retry within this execution (continue
from the checkpoints) from a fresh execution (train from scratch unless ``--resume``). The executor only supplies
how metrics are reported and, for Ray, a checkpoint Ray restored.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.suite import Trial
from bench.track import store

#: what an executor does with each epoch's numeric metrics (Ray: ``tune.report``; local: send them to the driver)
Report = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class SuiteContext:
    """What every trial of one suite execution gets from the driver, whichever executor runs it."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    results_dir: Path
    resume: bool
    cpus_per_trial: int
    gpus_per_trial: float
    mlflow_env: tuple[tuple[str, str], ...] = ()  # MLflow's HTTP settings: a lost server fails a trial in seconds


class TrialBody(Protocol):
    """The signature of :func:`run_trial`, which executors call (tests hand them fakes of it)."""

    def __call__(self, trial: Trial, ctx: SuiteContext, report: Report | None = None, *,
                 sampled: Mapping[str, Any] | None = None, restored: Any = None,
                 tags: Mapping[str, str] | None = None) -> str: ...


def run_trial(trial: Trial, ctx: SuiteContext, report: Report | None = None, *,
              sampled: Mapping[str, Any] | None = None, restored: Any = None,
              tags: Mapping[str, str] | None = None) -> str:
    """Train one trial, tracked in MLflow; return its status ("finished" or "diverged").

    ``report`` gets each epoch's numeric metrics; ``sampled`` holds a search point's values (Ray only);
    ``restored`` is a checkpoint Ray restored on a retry (anything with ``as_directory()``); ``tags`` are
    executor-specific run tags (which executor, Ray's node). An exception ends the run FAILED and propagates: the
    executor decides whether to retry; Ctrl-C ends it KILLED.
    """
    # the training loop and MLflow load with the first trial, not when the driver imports this module for its types
    import torch

    from bench.track.run import tracked_run
    from bench.train import train

    spec = trial.spec.with_values(**sampled) if sampled else trial.spec
    torch.set_num_threads(ctx.cpus_per_trial)
    ckpt_dir = ctx.results_dir / "checkpoints" / spec.key  # the run's key: one folder per search point
    continued = _prepare_checkpoints(ckpt_dir, ctx, restored)
    execution: dict[str, Any] = {"threads": ctx.cpus_per_trial, "checkpoint_dir": str(ckpt_dir), "resume": True}
    if ctx.gpus_per_trial == 0 and spec.config.device == "auto":
        execution["device"] = "cpu"
    spec = spec.with_execution(**execution)
    os.environ.update(dict(ctx.mlflow_env))  # a lost tracking server fails the trial in seconds, not minutes
    run_tags = {store.TRIAL_TAG: trial.key, store.RESULTS_TAG: str(ctx.results_dir), store.ATTEMPT_TAG: ckpt_dir.name,
                "worker": f"pid {os.getpid()} on host {socket.gethostname()}",
                "continued_from_checkpoint": str(continued).lower(), "w_bits": str(spec.config.w_bits),
                "a_bits": str(spec.config.a_bits), store.ROLE_TAG: _role(trial.estimator), **(tags or {})}
    identity = dataclasses.replace(trial.identity, key=spec.key)
    with tracked_run(ctx.tracking_uri, ctx.experiment_id, identity, spec, run_tags, ctx.parent_run_id) as run:
        callbacks = [run.on_epoch] if report is None else [run.on_epoch, _numeric(report)]
        # metrics only reach the executor: the checkpoints stay in the trial's own folder (one copy; a retry within
        # this execution continues from it, see the "execution" marker), not copied to Ray every epoch
        res = train(spec, callbacks=callbacks, stage_hooks=[run.final_model])
        run.finish(res)
    return res.status


def _numeric(report: Report) -> Callable[[dict[str, Any]], None]:
    """An epoch callback that hands ``report`` the epoch's top-level numbers (no per-layer diagnostics)."""
    return lambda record: report({k: v for k, v in record.items() if isinstance(v, (int, float)) and "/" not in k})


def _prepare_checkpoints(ckpt_dir: Path, ctx: SuiteContext, restored: Any) -> bool:
    """Clear or keep the trial's checkpoint folder, mark it as this execution's; True when training continues."""
    # which execution wrote the checkpoints: a retry within this one (a lost node or worker, possibly before Tune
    # registered its checkpoint) continues from them, a fresh execution trains from scratch
    marker = ckpt_dir / "execution"
    same_execution = marker.exists() and marker.read_text() == ctx.parent_run_id
    if not ctx.resume and restored is None and not same_execution and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)  # only --resume (or a retry) continues old checkpoints
    if restored is not None and not (ckpt_dir / "last.pt").exists():
        with restored.as_directory() as d:
            if (Path(d) / "last.pt").exists():
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(Path(d) / "last.pt", ckpt_dir / "last.pt")
    continued = (ckpt_dir / "last.pt").exists()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(ctx.parent_run_id)
    return continued


def _role(estimator: str) -> str:
    """How tables treat a trial: "baseline" (the FP network), "control" or "method" (the estimator's role)."""
    from bench.estimator import get_estimator_class
    from bench.spec import FP

    return "baseline" if estimator == FP else get_estimator_class(estimator).role
