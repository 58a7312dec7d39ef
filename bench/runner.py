"""Running a suite: one Ray Tune experiment per execution, every trial tracked in MLflow, resumable.

Resumption does not rely on Ray's experiment state (after a SIGKILL of the driver Ray restarts every trial):
the driver asks MLflow which trial keys already ended and submits only the others; each trial keeps its own
checkpoints under ``<results>/checkpoints/<key>/`` and continues from the last one.
"""

from __future__ import annotations

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
    """Runs inside a Ray worker: one training run, tracked in MLflow, reported to Tune."""
    import torch
    from ray import tune

    from bench import checkpoint as ckpt
    from bench import record as recording
    from bench.env import describe
    from bench.tracking import STATUS_TAG, TrialRun
    from bench.train import train

    trial, ctx = dict(config["trial"]), config["ctx"]
    cfg = dict(trial["config"])
    for k, v in config.items():  # sampled search-space values
        if k not in ("trial", "ctx"):
            cfg[k] = v
    cpus = int(ctx["cpus_per_trial"])
    torch.set_num_threads(cpus)
    ckpt_dir = Path(ctx["results_dir"]) / "checkpoints" / (trial["key"] + ("" if len(config) == 2 else
                                                                            "-" + _short_hash(cfg)))
    ctx_tune = tune.get_context()
    ckpt.claim(ckpt_dir, f"{ctx_tune.get_experiment_name()}/{ctx_tune.get_trial_id()}", keep=bool(ctx["resume"]))
    cfg.update(threads=cpus, checkpoint_dir=str(ckpt_dir), resume=True)
    if ctx.get("gpus_per_trial", 0) == 0:
        cfg.setdefault("device", "cpu")
    info = describe()
    tags = {"git_commit": info["git_commit"], **{f"version.{k}": v for k, v in info["versions"].items()},
            **{f"hardware.{k}": v for k, v in info["hardware"].items()}, "w_bits": str(cfg.get("w_bits")),
            "a_bits": str(cfg.get("a_bits")), "role": _role(trial["estimator"])}
    run = TrialRun(ctx["tracking_uri"], ctx["experiment_id"], ctx["parent_run_id"], trial, tags)

    logged: set[int] = set()

    def on_epoch(record: dict[str, Any]) -> None:
        step = int(record["global_epoch"])
        run.log_metrics(record, step)
        logged.add(step)
        # metrics only: the checkpoint stays in the trial's own folder (see checkpoint.claim), not copied to Ray
        tune.report({k: v for k, v in record.items() if isinstance(v, (int, float)) and "/" not in k})

    final_model = recording.FinalModel()
    monitor = None
    try:
        from bench.config import resolve_config

        resolved = resolve_config(cfg).to_dict()
        params, exec_tags = recording.split_config(resolved)
        run.log_params(params)
        run.set_tags(exec_tags)
        monitor = recording.start_system_metrics(run.run_id, ctx["tracking_uri"])
        res = train(cfg, callbacks=[on_epoch], stage_hooks=[final_model])
        recording.stop_system_metrics(monitor)
    except SystemExit:  # Ray ends a trial its scheduler stops (ASHA) this way: not a failure, not a result
        recording.stop_system_metrics(monitor)
        run.set_tags({STATUS_TAG: "stopped"})
        run.end("KILLED")
        raise
    except BaseException as exc:
        recording.stop_system_metrics(monitor)
        run.set_tags({STATUS_TAG: "failed", "error": f"{type(exc).__name__}: {exc}"})
        run.end("FAILED")
        raise
    for record in res.history:  # epochs restored from a checkpoint: their metrics belong in this run too
        if int(record["global_epoch"]) not in logged:
            run.log_metrics(record, int(record["global_epoch"]))
    run.log_metrics(recording.final_metrics(res), len(res.history))
    run.set_tags(recording.final_tags(res))
    recording.log_run_record(run.client, run.run_id, resolved, res, final_model.state_dict(ckpt_dir / "model.pt"))
    run.end("FINISHED" if res.status == "finished" else "FAILED")


def _role(estimator: str) -> str:
    """How tables treat a trial: "baseline" (the FP network), "control" or "method" (the estimator's role)."""
    from bench.estimator import get_estimator_class

    return "baseline" if estimator == "fp" else get_estimator_class(estimator).role


def _short_hash(cfg: dict[str, Any]) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_suite(suite: Suite, results_dir: str | os.PathLike, *, resume: bool = False, address: str | None = None,
              cpus_per_trial: int = 1, gpus_per_trial: float = 0.0, tracking_uri: str | None = None,
              max_concurrent: int | None = None, log=print) -> SuiteOutcome:
    import ray
    from ray import tune

    from bench import tracking
    from bench.env import describe

    results = Path(results_dir).resolve()
    results.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or tracking.default_tracking_uri(results)
    from bench import record as recording

    recording.quiet_mlflow()
    exp_id = tracking.prepare(uri, suite.name, recording.artifact_root(uri, results))
    keys = [t.key for t in suite.trials]
    done = tracking.finished_keys(uri, exp_id) if resume else set()
    todo = [t for t in suite.trials if t.key not in done]
    if resume:
        stale = tracking.kill_stale(uri, exp_id, {t.key for t in todo})
        log(f"resume: {len(done & set(keys))} of {len(keys)} trials already ended, {len(todo)} to run"
            + (f" ({stale} interrupted run(s) marked KILLED)" if stale else ""))
    info = describe()
    parent = tracking.start_parent(uri, exp_id, suite.name, {
        "suite_file": suite.path, "description": " ".join(suite.description.split())[:4000],
        "command": " ".join(["binbench", *sys.argv[1:]]) if sys.argv else "",
        "git_commit": info["git_commit"], "cpus_per_trial": str(cpus_per_trial),
        "gpus_per_trial": str(gpus_per_trial), "resume": str(resume), "trials": str(len(keys)),
        "submitted": str(len(todo)), **{f"version.{k}": v for k, v in info["versions"].items()},
        **{f"hardware.{k}": v for k, v in info["hardware"].items()}})
    recording.log_suite_file(tracking._client(uri), parent, suite.path)
    if not todo:
        tracking.end_run(uri, parent)
        return SuiteOutcome(results, uri, exp_id, parent, 0, len(keys), _statuses(uri, exp_id, keys))
    from bench.suite_progress import SuiteProgress, expected_trials, quiet_ray

    quiet = quiet_ray()
    # Ray's warning about experiment snapshot frequency is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray_tmp = None  # a local Ray's session folder: removed at the end, else they pile up in /tmp
    if not ray.is_initialized():
        if address:
            ray.init(address=address, **quiet)
        else:
            import torch

            # address='local': a new Ray of our own even when `ray start` left a cluster on this machine
            # (ray.init without an address joins it, and then refuses num_cpus)
            ray_tmp = tempfile.mkdtemp(prefix="binbench-ray-")
            ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(), _temp_dir=ray_tmp,
                     **quiet)
    ctx = {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent, "results_dir": str(results),
           "resume": resume,
           "cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus_per_trial}
    space: dict[str, Any] = {"trial": tune.grid_search([t.as_dict() for t in todo]), "ctx": ctx}
    tune_cfg: dict[str, Any] = {"max_concurrent_trials": max_concurrent, "reuse_actors": True,
                                "trial_name_creator": lambda t: t.config["trial"]["label"],
                                "trial_dirname_creator": lambda t: f"{t.config['trial']['label']}-{t.trial_id}"}
    if suite.search:
        from bench.search import CellASHA

        for k, spec in suite.search["space"].items():
            space[k] = _space(spec)
        tune_cfg["num_samples"] = int(suite.search.get("num_samples", 1))
        if suite.search.get("asha") is not None:
            asha = {k: v for k, v in (suite.search.get("asha") or {}).items() if k != "max_t"}
            # past the longest run: a trial that reaches its last epoch ends by itself, not by the scheduler
            max_t = max(int(t.resolved["epochs"]) for t in todo) + 1
            tune_cfg["scheduler"] = CellASHA(metric=suite.search.get("metric", "test_top1"),
                                             mode=suite.search.get("mode", "max"), max_t=max_t, **asha)
    trainable = tune.with_resources(_trial_fn, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    tuner = tune.Tuner(
        trainable, param_space=space, tune_config=tune.TuneConfig(**tune_cfg),
        run_config=tune.RunConfig(
            name=f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(results / "ray"),
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0,
            callbacks=[SuiteProgress(expected_trials(len(todo), suite.search),
                                     # only a scheduler stops trials early: without one every trial ends
                                     epochs={t.key: int(t.resolved["epochs"]) for t in todo}
                                     if "scheduler" in tune_cfg else None)]))
    log(f"suite {suite.name}: {len(todo)} trial(s) on Ray ({cpus_per_trial} CPU, {gpus_per_trial} GPU each); "
        f"tracking {uri}")
    try:
        grid = tuner.fit()
    finally:  # also after Ctrl-C: the session folder of a Ray started here goes with it
        if ray_tmp is not None:
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
    statuses = _statuses(uri, exp_id, keys)
    failed = sum(1 for s in statuses.values() if s == "failed")
    tracking.end_run(uri, parent, "FAILED" if failed else "FINISHED",
                     {"finished": str(sum(s == "finished" for s in statuses.values())),
                      "diverged": str(sum(s == "diverged" for s in statuses.values())), "failed": str(failed)})
    del grid
    return SuiteOutcome(results, uri, exp_id, parent, len(todo), len(keys) - len(todo), statuses)


def _statuses(uri: str, exp_id: str, keys: list[str]) -> dict[str, str]:
    from bench.tracking import KEY_TAG, STATUS_TAG, trial_runs

    out: dict[str, str] = {}
    for r in trial_runs(uri, exp_id):
        k = r.data.tags.get(KEY_TAG)
        st = r.data.tags.get(STATUS_TAG, "")
        if k in keys and (out.get(k) not in ("finished", "diverged")):
            out[k] = {"FINISHED": "finished"}.get(r.info.status, "diverged" if st == "diverged" else
                                                  ("failed" if r.info.status == "FAILED" else "unfinished"))
    for k in keys:
        out.setdefault(k, "missing")
    return out


def check_address(address: str | None) -> None:
    if address and address != "auto" and ":" not in address:
        raise BinbenchError(f"--address must be auto or HOST:PORT, got {address!r}")
