"""Packed trials: several runs of one shape trained as one program, each computing what it computes alone.

Each member is set up exactly as its solo run (``bench.train.setup``: seed, data, model, estimators), so it
starts from the solo run's weights and random state, and keeps its own parameters, optimizer, schedule, stage
plan, batch order and random stream. Only the training steps are shared: the members' batches are stacked and go
through one :class:`~bench.pack.model.PackedModel`, their losses are summed (the parameter sets are disjoint, so
each member's gradient is its solo gradient) and one backward runs. Everything around the steps (stage starts,
the divergence check, evaluation in the member's own modes, diagnostics, best epoch, hand-off, checkpoints,
callbacks, the result) is the solo loop's own code, called per member with the member's random stream in place.
A member that diverges ends ``diverged`` and leaves the pack; the others go on in a pack rebuilt without it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bench.data import get_dataset
from bench.errors import ConfigError
from bench.estimator import Progress
from bench.pack.model import MemberRng, NotPackable, PackedModel, check_per_member
from bench.progress import Reporter
from bench.spec import FP, RunSpec
from bench.train import (
    EpochCallback,
    EpochStart,
    RunResult,
    StageHook,
    _Run,
    close_epoch,
    close_stage,
    finish,
    fit,
    loss_precision,
    open_stage,
    setup,
)

#: called after every packed step with (step within the epoch, the members' losses (M,), the members in the pack)
StepHook = Callable[[int, torch.Tensor, Sequence["Member"]], None]
#: called once per member as soon as its result is known, with (its index in the pack, its result): a member
#: that diverges is reported when it leaves the pack, not when the others end
ResultHook = Callable[[int, RunResult], None]

#: the config keys members of one pack share: what fixes the model's shape, the data and the step count
PACK_KEYS = ("model", "model_args", "dataset", "train_subset", "val_split", "augment", "batch_size",
             "limit_train_batches", "device", "threads", "amp", "channels_last", "eval_batch_size", "data_root",
             "w_bits", "a_bits", "scaling")


def pack_key(spec: RunSpec) -> str:
    """What runs must share to pack: the keys of :data:`PACK_KEYS`, the total epoch count of the stage plan and
    whether the network is full precision (members may differ in estimators, hyperparameters, optimizer, lr,
    weight decay, schedule, stages and seed)."""
    cfg = spec.config.to_dict()
    # a full-precision network has plain layers where the others have binary ones: they pack among themselves
    return json.dumps({**{k: cfg.get(k) for k in PACK_KEYS}, "epochs": sum(s.epochs for s in spec.stages),
                       "full_precision": spec.config.estimator == FP}, sort_keys=True, default=str)


def packable(specs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """The specs grouped into packs (first-seen order): runs of one architecture, dataset (subset, split,
    augmentation), batch size, epochs and device."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        groups.setdefault(pack_key(spec), []).append(spec)
    return list(groups.values())


@dataclass
class Member:
    """One run in a pack: its solo run state, its random stream and where it stands in its stage plan."""

    run: _Run
    rng: MemberRng
    stochastic: bool
    stage: int = 0
    epoch: int = 0
    optimizer: Any = None
    scheduler: Any = None
    start: EpochStart | None = None
    lr: float = 0.0  # the learning rate of its last step


def train_pack(specs: Sequence[RunSpec], callbacks: Sequence[list[EpochCallback]] | None = None,
               step_hooks: Sequence[StepHook] = (), fallback: bool = True,
               stage_hooks: Sequence[list[StageHook]] | None = None,
               on_result: ResultHook | None = None) -> list[RunResult]:
    """Train ``specs`` (one pack: :func:`packable`) as one program; one result per spec, in order, each what
    ``bench.train.train(spec)`` returns (its checkpoints, with ``checkpoint_dir``, in its own folder as the solo
    run writes them; with ``resume`` each member continues from its own). ``callbacks[i]`` get member i's epoch
    records and ``stage_hooks[i]`` its stage boundaries, as ``train``'s; ``step_hooks`` every packed step;
    ``on_result`` each member's result as soon as it is known. A model that does not pack
    (:class:`NotPackable`) trains its members one after another when ``fallback``, else raises.

    A member's ``epoch_seconds`` is its share of the pack's epoch (the pack's wall time over its members): what
    packing cost it, not what the member costs alone, so step-cost comparisons between estimators need solo runs."""
    members = start_members(specs, callbacks, stage_hooks)
    try:
        return Pack(members, list(step_hooks), on_result).run()
    except NotPackable:
        if not fallback:
            raise
        results = []
        for i, m in enumerate(members):
            with m.rng.active():
                results.append(fit(m.run))
            if on_result is not None:
                on_result(i, results[-1])
        return results


def start_members(specs: Sequence[RunSpec], callbacks: Sequence[list[EpochCallback]] | None = None,
                  stage_hooks: Sequence[list[StageHook]] | None = None) -> list[Member]:
    """Every member set up as its solo run is; a member's random stream starts where its solo training would."""
    if not specs:
        raise ConfigError("a pack needs at least one run")
    keys = {pack_key(s) for s in specs}
    if len(keys) != 1:
        raise ConfigError("these runs do not pack (they differ in model, data, batch size, epochs or device); "
                          "group them with bench.pack.packable")
    members = []
    for i, spec in enumerate(specs):
        run = setup(spec, list(callbacks[i]) if callbacks else [], Reporter(enabled=False),
                    list(stage_hooks[i]) if stage_hooks else [])
        # a resumed member continues where its checkpoint stands, with the random state it saved
        members.append(Member(run, MemberRng(run.device), any(e.stochastic for e in run.estimators),
                              stage=run.state.stage, epoch=run.state.epoch))
    _share_data(members)
    return members


def _share_data(members: list[Member]) -> None:
    """Members that read the same split share one loader's resident tensors (a validation split depends on the
    seed); the batch order is a function of each member's own seed, not of the loader."""
    seen: dict[Any, Any] = {}
    for m in members:
        cfg = m.run.cfg
        m.run.loaders = seen.setdefault(cfg.seed if cfg.val_split else None, m.run.loaders)


class Pack:
    """The packed training loop over members that are set up (:func:`start_members`)."""

    def __init__(self, members: list[Member], step_hooks: list[StepHook], on_result: ResultHook | None = None):
        self.members = members
        self.step_hooks = step_hooks
        self.on_result = on_result
        self.results: dict[int, RunResult] = {}
        self.active: list[Member] = []
        self.packed: PackedModel | None = None
        running = [m for m in members if m.run.status == "running"]
        if running:  # a model that does not pack is refused before anything trains
            self._pack(running)

    def _pack(self, members: list[Member]) -> None:
        if [id(m) for m in members] != [id(m) for m in self.active]:
            self.active = members
            self.packed = self._build()

    def _build(self) -> PackedModel:
        rngs = [m.rng if m.stochastic else None for m in self.active]
        packed = PackedModel([m.run.model for m in self.active], rngs)
        run0 = self.active[0].run
        check_per_member(packed, get_dataset(run0.cfg.dataset).shape, rngs, run0.device)
        return packed

    def run(self) -> list[RunResult]:
        """Every epoch of the plan: the members that stand at it (all, unless a resume left some ahead) train as
        one pack; a member that diverged is gone from the next epoch's pack; then each member's result."""
        for m in self.members:
            if m.run.status == "running":
                with m.rng.active():
                    _catch_up(m)
            else:  # diverged before its first epoch (its init, a resumed checkpoint): it never joins the pack
                self._result(m)
        for g in range(sum(s.epochs for s in self.members[0].run.spec.stages)):
            members = [m for m in self.members if m.run.status == "running" and _position(m) == g]
            if not members:
                continue
            self._pack(members)
            for m in self.active:
                with m.rng.active():
                    _begin_epoch(m)
            records = self.train_epoch()
            for m, record in zip(self.active, records, strict=True):
                with m.rng.active():
                    if not _end_epoch(m, record):
                        self._result(m)  # it leaves the pack: its result now, not when the others end
        for m in self.members:
            self._result(m)
        return [self.results[i] for i in range(len(self.members))]

    def _result(self, m: Member) -> None:
        """A member's ending, once: the solo loop's ``finish`` (or ``fit`` for a run that diverged before its
        first epoch, which records that epoch), then ``on_result``."""
        i = next(i for i, x in enumerate(self.members) if x is m)
        if i in self.results:
            return
        with m.rng.active():
            self.results[i] = fit(m.run) if m.run.status == "diverged" and not m.run.history else finish(m.run)
        if self.on_result is not None:
            self.on_result(i, self.results[i])

    def train_epoch(self) -> list[dict[str, Any]]:
        """One epoch of packed steps; each member's loss and accuracy accumulate on the device, read once."""
        active, run0 = self.active, self.active[0].run
        self.packed.train()
        t0 = time.perf_counter()
        iters = [m.run.loaders.train.batches(m.run.cfg.seed, m.stage, m.epoch) for m in active]
        loss_sum = torch.zeros(len(active), device=run0.device)
        correct = torch.zeros(len(active), device=run0.device, dtype=torch.long)
        seen = 0
        for step in range(run0.steps_per_epoch):
            batches = [next(it, None) for it in iters]
            if any(b is None for b in batches):
                break
            for m in active:
                m.lr = m.optimizer.param_groups[0]["lr"]
            x = torch.cat([b[0] for b in batches])
            y = torch.cat([b[1] for b in batches])
            losses, logits = self.step(x, y)
            b = batches[0][1].shape[0]
            loss_sum += losses.detach() * b
            correct += (logits.detach().argmax(1) == y).view(len(active), b).sum(1)
            seen += b
            for hook in self.step_hooks:
                hook(step, losses.detach(), active)
        if run0.device.type == "cuda":
            torch.cuda.synchronize()
        # the pack's wall time shared out: a member's epoch costs its share of the program it ran in
        seconds = (time.perf_counter() - t0) / len(active)
        loss, top1 = (loss_sum / max(1, seen)).tolist(), (100.0 * correct / max(1, seen)).tolist()
        return [_record(m, loss[i], top1[i], seconds) for i, m in enumerate(active)]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One packed optimisation step: forward, each member's task loss plus its estimator's loss term, one
        backward of their sum, then each member's own optimizer, schedule and projection. No host sync."""
        active = self.active
        with active[0].run.autocast():
            logits = loss_precision(self.packed(x))
            # each member's mean loss by the solo run's own reduction (one mean cross entropy per member): the
            # same rounding as alone, where a single "none" reduction followed by a mean would sum in another order
            per_member = zip(logits.view(len(active), -1, logits.shape[-1]), y.view(len(active), -1), strict=True)
            losses = torch.stack([F.cross_entropy(lg, yy) for lg, yy in per_member])
            total = losses.sum()
            for m in active:
                if m.run.est is None:
                    continue
                with m.rng.active() if m.stochastic else contextlib.nullcontext():
                    extra = m.run.est.extra_loss(m.run.weight_qs)
                if extra is not None:
                    total = total + extra
        for m in active:
            m.optimizer.zero_grad(set_to_none=True)
        total.backward()
        for m in active:
            m.optimizer.step()
            m.scheduler.step()
            if m.run.constrained:
                with torch.no_grad():
                    for q, w in m.run.constrained:
                        q.estimator.constrain_(w, q)
        return losses, logits


def _position(m: Member) -> int:
    """The member's next epoch, counted over its whole stage plan."""
    return sum(s.epochs for s in m.run.spec.stages[: m.stage]) + m.epoch


def _catch_up(m: Member) -> None:
    """A resumed member whose checkpoint ends a stage: that stage opened and closed (its hand-off), as the solo
    loop's ``run_stage`` does with no epoch left to run."""
    stages = m.run.spec.stages
    while m.stage < len(stages) and m.epoch >= stages[m.stage].epochs:
        m.optimizer, m.scheduler, _ = open_stage(m.run, stages[m.stage])
        close_stage(m.run, stages[m.stage])
        m.stage, m.epoch = m.stage + 1, 0


def _begin_epoch(m: Member) -> None:
    """The solo loop's start of an epoch for one member: its stage's start where one begins, its progress, the
    state a diverged epoch is replayed from."""
    run = m.run
    stage = run.spec.stages[m.stage]
    if m.epoch == 0 or m.optimizer is None:  # a stage starts, or a resumed member continues inside one
        m.optimizer, m.scheduler, _ = open_stage(run, stage)
    progress = Progress(stage.index, stage.name, m.epoch, stage.epochs)
    for e in run.estimators:
        e.set_progress(progress)
    m.start = EpochStart.take(run.model, m.optimizer, m.scheduler)


def _end_epoch(m: Member, record: dict[str, Any]) -> bool:
    """The solo loop's end of an epoch for one member (``close_epoch``) and of its stage where one ends; False
    when the member diverged (its stage is closed as the solo loop closes it)."""
    run = m.run
    stage = run.spec.stages[m.stage]
    ok = close_epoch(run, stage, m.epoch, m.optimizer, m.scheduler, record, m.start)
    m.start = None
    m.epoch += 1
    if not ok or m.epoch == stage.epochs:
        close_stage(run, stage)
        m.stage, m.epoch = m.stage + 1, 0
    return ok


def _record(m: Member, loss: float, top1: float, seconds: float) -> dict[str, Any]:
    stage = m.run.spec.stages[m.stage]
    return {"stage": stage.index, "stage_name": stage.name, "epoch": m.epoch, "global_epoch": len(m.run.history),
            "lr": m.lr, "train_loss": loss, "train_top1": top1, "epoch_seconds": seconds}


__all__ = ["Member", "NotPackable", "Pack", "PACK_KEYS", "ResultHook", "pack_key", "packable", "start_members",
           "train_pack"]
