"""One unit of suite work, whatever runs it: the local executor (``bench.exec.local``) or a Ray Tune trainable
(``bench.exec.ray_tune``), each handed :func:`run_pack` by the driver.

A unit is a :class:`Pack`: trials that share model, data, batch size and epochs trained as one program
(``bench.pack.train_pack``), or one trial alone (``bench.train.train``). ``run_pack`` is the whole body: each
member's spec (resolved once when the suite was expanded; a search point's values resolve it again), its own
tracked MLflow run (``bench.track.run``), its own checkpoint folder under ``<results>/checkpoints/<key>/`` with
the "execution" marker that tells a retry within this execution (continue from the checkpoints) from a fresh
execution (train from scratch unless ``--resume``), and the "ended" marker of a member whose run already ended
in this execution (a retried pack does not train it again). A packed run differs from a solo one only by its
pack tags. The executor only supplies how metrics are reported and, for Ray, a checkpoint Ray restored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.suite import Trial
from bench.track import store


@dataclass(frozen=True)
class Pack:
    """What an executor runs as one unit: trials trained as one program (``bench.pack``: they share model, data,
    batch size and epochs), or one trial alone. Each member keeps its own identity, MLflow run and checkpoints."""

    trials: tuple[Trial, ...]

    @property
    def key(self) -> str:
        """The pack's id (a digest of its members' keys): the tag that says which pack a run trained in."""
        if len(self.trials) == 1:
            return self.trials[0].key
        return hashlib.sha256(" ".join(t.key for t in self.trials).encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        t = self.trials[0]
        return t.label if len(self.trials) == 1 else f"pack of {len(self.trials)} ({t.model} {t.dataset})"


@dataclass(frozen=True)
class MemberReport:
    """What a pack tells its executor about one member: an epoch's numeric metrics, or (``status`` set) its end."""

    member: int  # the member's index in its pack
    metrics: Mapping[str, float]
    status: str | None = None  # "finished" or "diverged" once the member ended


#: what an executor does with each member's epochs and end (Ray: ``tune.report``; local: send them to the driver)
Report = Callable[[MemberReport], None]


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


class PackBody(Protocol):
    """The signature of :func:`run_pack`, which executors call (tests hand them fakes of it)."""

    def __call__(self, pack: Pack, ctx: SuiteContext, report: Report | None = None, *,
                 sampled: Mapping[str, Any] | None = None, restored: Any = None,
                 tags: Mapping[str, str] | None = None) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class _Member:
    """One member of a pack, ready to train: its trial, its spec with the execution's settings, its tags."""

    index: int
    trial: Trial
    spec: Any  # RunSpec
    ckpt_dir: Path
    tags: Mapping[str, str]
    ended: str | None  # its status when it already ended in this execution (a retried pack)


def run_pack(pack: Pack, ctx: SuiteContext, report: Report | None = None, *,
             sampled: Mapping[str, Any] | None = None, restored: Any = None,
             tags: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Train a pack's trials (one trial: the solo loop; more: ``bench.pack.train_pack``), each tracked in its own
    MLflow run; return each member's status ("finished" or "diverged"), in order.

    ``report`` gets each member's epoch metrics and end; ``sampled`` holds a search point's values (Ray only, packs
    of one); ``restored`` is a checkpoint Ray restored on a retry (anything with ``as_directory()``); ``tags`` are
    executor-specific run tags (which executor, Ray's node). An exception ends every member's run that has no
    result FAILED and propagates: the executor decides whether to retry (each member continues from its
    checkpoint; one that already ended in this execution keeps its result); Ctrl-C ends them KILLED.
    """
    # the training loop and MLflow load with the first pack, not when the driver imports this module for its types
    import torch

    torch.set_num_threads(ctx.cpus_per_trial)
    if len(pack.trials) > 1 and (sampled or restored is not None):
        raise ValueError("a search point or a restored Ray checkpoint belongs to a pack of one trial")
    os.environ.update(dict(ctx.mlflow_env))  # a lost tracking server fails the trial in seconds, not minutes
    members = [_prepare(i, t, ctx, pack, sampled, restored, tags) for i, t in enumerate(pack.trials)]
    statuses = {m.index: m.ended for m in members if m.ended}
    live = [m for m in members if not m.ended]
    if live:
        _train_members(live, ctx, report, statuses)
    return tuple(statuses[i] for i in range(len(members)))


def _prepare(i: int, trial: Trial, ctx: SuiteContext, pack: Pack, sampled: Mapping[str, Any] | None,
             restored: Any, tags: Mapping[str, str] | None) -> _Member:
    """A member's spec with this execution's settings, its checkpoint folder and its run tags."""
    spec = trial.spec.with_values(**sampled) if sampled else trial.spec
    ckpt_dir = ctx.results_dir / "checkpoints" / spec.key  # the run's key: one folder per search point
    continued, ended = _prepare_checkpoints(ckpt_dir, ctx, restored)
    execution: dict[str, Any] = {"threads": ctx.cpus_per_trial, "checkpoint_dir": str(ckpt_dir), "resume": True}
    if ctx.gpus_per_trial == 0 and spec.config.device == "auto":
        execution["device"] = "cpu"
    spec = spec.with_execution(**execution)
    run_tags = {store.TRIAL_TAG: trial.key, store.RESULTS_TAG: str(ctx.results_dir), store.ATTEMPT_TAG: ckpt_dir.name,
                "worker": f"pid {os.getpid()} on host {socket.gethostname()}",
                "continued_from_checkpoint": str(continued).lower(), "w_bits": str(spec.config.w_bits),
                "a_bits": str(spec.config.a_bits), store.ROLE_TAG: _role(trial.estimator),
                store.PACK_TAG: pack.key, store.PACK_SIZE_TAG: str(len(pack.trials)), **(tags or {})}
    return _Member(i, trial, spec, ckpt_dir, run_tags, ended)


def _train_members(live: list[_Member], ctx: SuiteContext, report: Report | None, statuses: dict[int, str]) -> None:
    """Open every live member's tracked run, train them (alone or packed), end each run with its result."""
    from bench.track.run import tracked_run

    # one process, one machine: the first member's run holds the pack's system metrics (a monitor thread per
    # member, 15 of them sampling and writing to the store, cost a tenth of a core in a cifar10-cpu pack)
    shared = {store.SYSTEM_METRICS_TAG: live[0].spec.key}
    with contextlib.ExitStack() as stack:
        runs = [stack.enter_context(tracked_run(ctx.tracking_uri, ctx.experiment_id,
                                                dataclasses.replace(m.trial.identity, key=m.spec.key), m.spec,
                                                {**m.tags, **(shared if j else {})}, ctx.parent_run_id,
                                                system_metrics=j == 0)) for j, m in enumerate(live)]

        def ended(j: int, res: Any) -> None:  # a member's result: its run ends now, a retry will not train it again
            runs[j].finish(res)
            statuses[live[j].index] = res.status
            (live[j].ckpt_dir / "ended").write_text(f"{ctx.parent_run_id} {res.status}")
            if report is not None:
                report(MemberReport(live[j].index, {}, res.status))

        callbacks = [[run.on_epoch] + ([_numeric(report, m.index)] if report is not None else [])
                     for m, run in zip(live, runs, strict=True)]
        # metrics only reach the executor: the checkpoints stay in each trial's own folder (one copy; a retry within
        # this execution continues from it, see the "execution" marker), not copied to Ray every epoch
        if len(live) == 1:
            from bench.train import train

            ended(0, train(live[0].spec, callbacks=callbacks[0], stage_hooks=[runs[0].final_model]))
        else:
            from bench.pack import train_pack

            train_pack([m.spec for m in live], callbacks, stage_hooks=[[r.final_model] for r in runs],
                       on_result=ended)


def _numeric(report: Report, member: int) -> Callable[[dict[str, Any]], None]:
    """An epoch callback that hands ``report`` the epoch's top-level numbers (no per-layer diagnostics)."""
    return lambda record: report(MemberReport(member, {k: v for k, v in record.items()
                                                       if isinstance(v, (int, float)) and "/" not in k}))


def _prepare_checkpoints(ckpt_dir: Path, ctx: SuiteContext, restored: Any) -> tuple[bool, str | None]:
    """Clear or keep the trial's checkpoint folder, mark it as this execution's; (whether training continues,
    its status when the trial already ended in this execution: a member of a retried pack)."""
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
    ended_file = ckpt_dir / "ended"
    ended = ended_file.read_text().split() if same_execution and ended_file.exists() else []
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(ctx.parent_run_id)
    return continued, (ended[1] if len(ended) == 2 and ended[0] == ctx.parent_run_id else None)


def _role(estimator: str) -> str:
    """How tables treat a trial: "baseline" (the FP network), "control" or "method" (the estimator's role)."""
    from bench.estimator import get_estimator_class
    from bench.spec import FP

    return "baseline" if estimator == FP else get_estimator_class(estimator).role
