"""The Ray Tune executor: the suite's trials as one Tune experiment, and Tune's hooks adapted to binbench's.

The driver hands :func:`run_on_ray` the packs (``bench.exec.trial.Pack``: trials trained as one program, or one
trial; a search suite's are all of one), the suite context and the body; the trainable gets the three through
``tune.with_parameters`` and calls the body with the pack Tune picked: one Tune trial per pack. Tune's param space
holds each pack's index (Tune would take a dataclass apart) and the search space's samplers. Tune's callback
hooks become ``bench.exec.progress.TrialEvents`` for each member (:class:`TuneEvents`) and the tracking server
watch (``bench.track.store.StoreWatch``) a Tune stopper and callback. Ray's start-up banners, tips and tables are kept
off the console: the suite's own progress lines replace them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray import tune

from bench.errors import BinbenchError
from bench.exec.progress import TrialEvents
from bench.exec.trial import MemberReport, Pack, PackBody, SuiteContext
from bench.suite import Suite, search_points
from bench.track.store import StoreWatch


def quiet_ray() -> dict[str, Any]:
    """Environment and logging that keep Ray's start-up banners, tips and tables off the console; returns the
    ``ray.init`` keyword arguments that do the rest. The suite's own progress lines replace them."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new output engine prints its tables even at verbose=0
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard loggers per trial
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}


class TuneEvents(tune.Callback):
    """Tune's callback hooks as :class:`bench.exec.progress.TrialEvents` for each member of a pack, in the driver.

    ``epochs`` (trial key -> epochs it trains when nothing stops it) is given when a scheduler may stop trials
    early: Tune marks the last result done whether the trial ended or the scheduler (ASHA) stopped it, and the
    epoch count (one report per epoch) tells them apart. A member's results carry its index in the pack."""

    def __init__(self, events: TrialEvents, packs: Sequence[Pack], epochs: dict[str, int] | None = None):
        self.events, self.packs, self.epochs = events, tuple(packs), epochs or {}
        self.last: dict[tuple[str, int], dict[str, Any]] = {}  # (Tune trial, member) -> its last result
        self.ended: set[tuple[str, int]] = set()

    def _members(self, trial: Any) -> list[tuple[str, Any]]:
        pack = self.packs[trial.config["trial"]]
        one = len(pack.trials) == 1
        return [(trial.trial_id if one else f"{trial.trial_id}.{i}", t) for i, t in enumerate(pack.trials)]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for point, t in self._members(trial):
            self.events.started(point, t)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for i, (point, t) in enumerate(self._members(trial)):
            if (trial.trial_id, i) not in self.ended:
                self.events.retried(point, t)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.last[(trial.trial_id, int(result.get("member", 0)))] = result

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for i, (point, t) in enumerate(self._members(trial)):
            result = self.last.get((trial.trial_id, i)) or trial.last_result or {}
            top1 = result.get("test_top1")
            top1 = float(top1) if isinstance(top1, (int, float)) and not result.get("diverged") else None
            self.ended.add((trial.trial_id, i))
            self.events.ended(point, t, _status(result, self.epochs.get(t.key)), top1)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for i, (point, t) in enumerate(self._members(trial)):
            if (trial.trial_id, i) not in self.ended:
                self.events.failed(point, t)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.events.closed()


def _status(result: dict[str, Any], planned: int | None) -> str:
    if result.get("diverged"):
        return "diverged"
    if planned is not None and int(result.get("training_iteration", planned)) < planned:
        return "stopped"
    return "finished"


class _WatchStopper(tune.Stopper):
    """Stops the whole experiment once the store watch lost the tracking server."""

    def __init__(self, watch: StoreWatch):
        self.watch = watch

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.watch.lost


class _WatchCallback(tune.Callback):
    """Asks the store watch after every failed attempt."""

    def __init__(self, watch: StoreWatch):
        self.watch = watch

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.watch.check()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.watch.check()


class _OneLineTrialErrors:
    """Ray logs a failed trial with its whole traceback; one line here, the traceback stays in the trial's
    error file under ``<results>/ray`` (and the trial's MLflow run has the error as a tag)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            last = lines[-1] if lines else type(exc).__name__
            record.msg = f"{record.getMessage()}: {last[:300]} (full traceback in the trial's error.txt)"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def start_ray(address: str | None, cpus_per_trial: int, gpus_per_trial: float) -> str | None:
    """Join the cluster at ``address`` or start a Ray of our own; return the session folder to remove at the end
    (None when Ray was joined or already running)."""
    quiet = quiet_ray()
    # Ray's warning about experiment snapshot frequency is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ctl = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, _OneLineTrialErrors) for f in ctl.filters):
        ctl.addFilter(_OneLineTrialErrors())
    if ray.is_initialized():
        return None
    if address:
        _join(address, quiet)
        _check_fit(address, cpus_per_trial, gpus_per_trial)
        return None
    import torch

    # address='local': a new Ray of our own even when `ray start` left a cluster on this machine (ray.init without
    # an address joins it, and then refuses num_cpus); its session folder is ours, else they pile up in /tmp
    ray_tmp = tempfile.mkdtemp(prefix="binbench-ray-")
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(), _temp_dir=ray_tmp,
             **quiet)
    return ray_tmp


def stop_ray(ray_tmp: str) -> None:
    """Shut down the Ray this execution started and remove its session folder."""
    ray.shutdown()
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _join(address: str, quiet: dict[str, Any]) -> None:
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
        raise BinbenchError(f"cannot join the Ray cluster at {address}: {type(exc).__name__}: {msg}{hint}") from None


def _check_fit(address: str, cpus_per_trial: int, gpus_per_trial: float) -> None:
    """A trial that no alive node can hold would wait forever: refused once joined."""
    fits = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= cpus_per_trial
            and n["Resources"].get("GPU", 0) >= gpus_per_trial]
    if not fits:
        have = ", ".join(f"{n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0):g} CPU "
                         f"{n['Resources'].get('GPU', 0):g} GPU" for n in ray.nodes() if n.get("Alive"))
        ray.shutdown()
        raise BinbenchError(f"no node of the Ray cluster at {address} has {cpus_per_trial} CPU and "
                            f"{gpus_per_trial:g} GPU for one trial (nodes: {have or 'none alive'}); lower "
                            "--cpus-per-trial / --gpus-per-trial")


def _space(spec: dict[str, Any]) -> Any:
    (kind, args), = spec.items()
    return {"loguniform": lambda a: tune.loguniform(*a), "uniform": lambda a: tune.uniform(*a),
            "choice": tune.choice, "randint": lambda a: tune.randint(*a), "grid": tune.grid_search}[kind](args)


def _ray_trial(config: dict[str, Any], packs: Sequence[Pack], ctx: SuiteContext, body: PackBody) -> None:
    """Runs inside a Ray worker: ``body`` on the pack Tune picked, its members' epochs reported to Tune."""
    sampled = {k: v for k, v in config.items() if k != "trial"}  # the search point's values
    body(packs[config["trial"]], ctx, _tune_report, sampled=sampled,
         restored=tune.get_checkpoint() if len(packs[config["trial"]].trials) == 1 else None,  # a Ray retry's
         tags={"executor": "ray", "ray_node": ray.get_runtime_context().get_node_id()})


def _tune_report(r: MemberReport) -> None:
    """A member's epoch as one Tune result (with its index in the pack); its end is in its last epoch's result."""
    if r.status is None:
        tune.report({**r.metrics, "member": r.member})


def _tune_config(suite: Suite, todo: Sequence[Pack], max_concurrent: int | None) -> tuple[dict, dict]:
    """(param space, TuneConfig arguments): every pack's index a grid point, the search's samplers and its
    per-cell ASHA (a search suite's packs are single trials)."""
    space: dict[str, Any] = {"trial": tune.grid_search(list(range(len(todo))))}
    cfg: dict[str, Any] = {"max_concurrent_trials": max_concurrent, "reuse_actors": True,
                           "trial_name_creator": lambda t: todo[t.config["trial"]].label,
                           "trial_dirname_creator": lambda t: f"{_dirname(todo[t.config['trial']])}-{t.trial_id}"}
    if suite.search:
        from bench.exec.asha import CellASHA

        for k, spec in suite.search["space"].items():
            space[k] = _space(spec)
        cfg["num_samples"] = int(suite.search.get("num_samples", 1))
        if suite.search.get("asha") is not None:
            asha = {k: v for k, v in (suite.search.get("asha") or {}).items() if k != "max_t"}
            # past the longest run: a trial that reaches its last epoch ends by itself, not by the scheduler
            max_t = max(p.trials[0].spec.config.epochs for p in todo) + 1
            cfg["scheduler"] = CellASHA([p.trials[0] for p in todo], metric=suite.search.get("metric", "test_top1"),
                                        mode=suite.search.get("mode", "max"), max_t=max_t, **asha)
    return space, cfg


def _dirname(pack: Pack) -> str:
    return pack.label if len(pack.trials) == 1 else f"pack-{pack.key}"


def run_on_ray(suite: Suite, todo: Sequence[Pack], ctx: SuiteContext, body: PackBody, events: TrialEvents,
               watch: StoreWatch, max_concurrent: int | None = None, log: Callable[[str], None] = print) -> None:
    """Run ``body`` on each of ``todo`` as one Ray Tune experiment (a search suite's samplers and ASHA included)."""
    space, cfg = _tune_config(suite, todo, max_concurrent)
    # only a scheduler stops trials early: without one every trial ends
    epochs = {t.key: t.spec.config.epochs for p in todo for t in p.trials} if "scheduler" in cfg else None
    trainable = tune.with_resources(tune.with_parameters(_ray_trial, packs=tuple(todo), ctx=ctx, body=body),
                                    {"cpu": ctx.cpus_per_trial, "gpu": ctx.gpus_per_trial})
    tuner = tune.Tuner(
        trainable, param_space=space, tune_config=tune.TuneConfig(**cfg),
        run_config=tune.RunConfig(
            name=f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(ctx.results_dir / "ray"),
            failure_config=tune.FailureConfig(max_failures=2), stop=_WatchStopper(watch),
            callbacks=[_WatchCallback(watch), TuneEvents(events, todo, epochs)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0))
    trials = sum(len(p.trials) for p in todo)
    packed = f" in {len(todo)} pack(s)" if len(todo) < trials else ""
    log(f"suite {suite.name}: {trials} trial(s){packed} on Ray ({ctx.cpus_per_trial} CPU, {ctx.gpus_per_trial} GPU "
        f"each); tracking {ctx.tracking_uri}")
    tuner.fit()


def tune_trials(suite: Suite, todo: Sequence[Pack]) -> int:
    """How many trials running ``todo`` trains: each grid trial at every point of the suite's search."""
    return sum(len(p.trials) for p in todo) * search_points(suite.search)
