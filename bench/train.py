"""The one training loop every estimator, ``binbench run`` and the suites share.

``train(spec) -> RunResult`` for a spec from ``bench.spec.resolve``, in named steps: ``setup``, ``fit``,
``run_stage``, ``run_epoch`` (``train_epoch``, ``evaluate_epoch``, the checkpoint). Per epoch: the estimator
hears the progress, the model trains on device-resident batches (no host sync per step: loss and accuracy
accumulate on the device and are read once per epoch), every evaluation mode of the estimator is measured,
diagnostics are collected, a checkpoint is written. A NaN/inf loss ends the run with status ``diverged``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import checkpoint as ckpt
from bench.config import RunConfig
from bench.data import DatasetSpec, get_dataset, load_dataset
from bench.data.loader import ResidentLoader
from bench.diagnostics import DiagnosticsTracker, nonfinite
from bench.env import describe
from bench.errors import ConfigError
from bench.estimator import Estimator, Progress, Stage, create_estimator, estimator_quantizers
from bench.layers import BinarySpec, init_latents_
from bench.models import create_model
from bench.progress import Reporter
from bench.spec import RunSpec, StagePlan

EpochCallback = Callable[[dict[str, Any]], None]
StageHook = Callable[[str, int, nn.Module], None]


@dataclass
class RunResult:
    status: str  # finished | diverged
    config: dict[str, Any]
    top1: float  # final epoch, headline eval mode
    best_top1: float  # best epoch of the last stage, headline mode
    #: that epoch, counted from 1 within the last stage as the console prints it; None when none was evaluated.
    #: (``history`` records keep Python's 0-based ``epoch`` and ``global_epoch``: they index the loop.)
    best_epoch: int | None
    top5: float | None
    best_top5: float | None
    eval_modes: dict[str, float]  # final top-1 per evaluation mode
    history: list[dict[str, Any]]
    epoch_seconds: float
    params: dict[str, int]
    env: dict[str, Any]
    message: str = ""
    stages: list[dict[str, Any]] = field(default_factory=list)
    #: test top-1 (headline mode) at the last-stage epoch with the best validation top-1; nan without val_split
    selected_top1: float | None = None
    selected_epoch: int | None = None  # that epoch, counted from 1 within the last stage (as best_epoch)
    #: test top-1 gain (points) over the last quarter of the run's epochs: > 0.5 means still learning; None for
    #: a run of one epoch
    late_gain: float | None = None
    data_source: str = ""  # which files the data came from ("CIFAR-10 (JPEG copy)", ...)
    data_digest: str = ""  # their content digest ("sha256:...", see bench.data), "" where the loader gives none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- building -------------------------------------------------------------------------------------------
def build_estimators(cfg: RunConfig) -> tuple[Estimator | None, Estimator | None]:
    weight = create_estimator(cfg.estimator, **cfg.estimator_hparams) if cfg.w_bits == 1 else None
    if cfg.a_bits == 32:
        return weight, None
    act_name = cfg.activation_estimator or cfg.estimator
    if weight is not None and act_name == cfg.estimator and cfg.activation_hparams in ({}, cfg.estimator_hparams):
        # one estimator binarizes both (as several methods do in their own recipes)
        return weight, weight
    return weight, create_estimator(act_name, **cfg.activation_hparams)


def build_model(cfg: RunConfig, ds: DatasetSpec) -> tuple[nn.Module, Estimator | None, Estimator | None]:
    """The model of a resolved config and its estimators (weight, activation); the layers apply the scaling only
    to binary weights."""
    weight, act = build_estimators(cfg)
    model = create_model(cfg.model, BinarySpec(weight, act, cfg.scaling), ds.num_classes, ds.shape,
                         **cfg.model_args)
    return model, weight, act


@dataclass
class Loaders:
    train: Any
    test: Any
    val: Any = None  # None without val_split
    source: str = ""
    digest: str = ""


def split_validation(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices: a seeded random ``fraction`` of range(n) held out, both sorted."""
    n_val = round(n * fraction)
    if not 0 < n_val < n:
        raise ConfigError(f"val_split={fraction} of {n} training images leaves an empty split; pick a fraction "
                          "that holds out between 1 image and all but one")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def make_loaders(cfg: RunConfig, ds: DatasetSpec, device: torch.device, channels_last: bool) -> Loaders:
    """Train, test (and validation) loaders: device-resident tensors, or a streaming DataLoader for ImageNet."""
    if ds.streaming:
        from bench.data import resolve_data_root
        from bench.data.stream import imagenet_loaders

        train, test = imagenet_loaders(resolve_data_root(cfg.data_root), cfg.batch_size, cfg.eval_batch_size, device,
                                       workers=max(1, int(cfg.threads or 4)), image_size=ds.shape[-1])
        return Loaders(train, test, source="ImageNet (ImageFolder)")
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.download)
    train_x, train_y = data.train_x, data.train_y
    if cfg.train_subset:
        train_x, train_y = train_x[: cfg.train_subset], train_y[: cfg.train_subset]
    val = None
    if cfg.val_split:
        tr, va = split_validation(len(train_y), cfg.val_split, cfg.seed)
        val = ResidentLoader(train_x[va], train_y[va], ds, cfg.eval_batch_size, device, train=False,
                             channels_last=channels_last)
        train_x, train_y = train_x[tr], train_y[tr]
    train = ResidentLoader(train_x, train_y, ds, cfg.batch_size, device, train=True, augment=cfg.augment,
                           channels_last=channels_last)
    test = ResidentLoader(data.test_x, data.test_y, ds, cfg.eval_batch_size, device, train=False,
                          channels_last=channels_last)
    return Loaders(train, test, val, str(getattr(data, "source", "") or ds.name), str(getattr(data, "digest", "")))


def make_optimizer(model: nn.Module, stage: StagePlan) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if stage.optimizer == "sgd":
        return torch.optim.SGD(params, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)
    if stage.optimizer == "adam":
        return torch.optim.Adam(params, lr=stage.lr, weight_decay=stage.weight_decay)
    raise ConfigError(f"unknown optimizer {stage.optimizer!r}; valid: sgd, adam")


def lr_factor(step: int, steps_per_epoch: int, stage: StagePlan) -> float:
    """Learning-rate factor at a step: linear warm-up, then cosine to 0 / step decay / constant.

    ``schedule_unit="iteration"``: it moves every step. ``"epoch"``: it is held for each epoch e (0-based) as
    several official scripts step it (``lr (e + 1) / W`` for e < W, then ``CosineAnnealingLR`` with
    T_max = E - (W - 1) stepped once per epoch, so e = W - 1 has the full lr both ways; W = 0: a plain per-epoch
    cosine); the published recipes that use it cite the lines."""
    if stage.schedule_unit == "epoch":
        return _epoch_factor(step // max(1, steps_per_epoch), stage)
    total = max(1, stage.epochs * steps_per_epoch)
    warm = min(stage.warmup_epochs * steps_per_epoch, total - 1)
    if step < warm:
        return (step + 1) / (warm + 1)
    t = (step - warm) / max(1, total - warm)
    if stage.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if stage.lr_schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


def _epoch_factor(epoch: int, stage: StagePlan) -> float:
    warm = stage.warmup_epochs
    if epoch < warm:
        return (epoch + 1) / warm
    start = max(warm - 1, 0)
    t = (epoch - start) / max(1, stage.epochs - start)
    if stage.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if stage.lr_schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but torch sees no GPU; use --set device=cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameter counts, and how much of the network is binary: conv/linear layers and their weights."""
    from bench.layers import binary_layers

    total = sum(p.numel() for p in model.parameters())
    quant = sum(p.numel() for q in estimator_quantizers(model) for p in q.parameters())
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    binary = binary_layers(model)
    return {"total": total, "binary_weights": sum(layer.weight.numel() for _, layer in binary),
            "layer_weights": sum(m.weight.numel() for m in layers), "binary_layers": len(binary),
            "layers": len(layers), "estimator_state": quant}


def loss_precision(logits: torch.Tensor) -> torch.Tensor:
    """Logits as the loss reads them: float32 at least (bf16 autocast's logits are upcast), float64 kept (a
    float64 run, such as an equivalence test's, computes its loss in float64 too)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def training_step(model: nn.Module, est: Estimator | None, weight_qs: list, constrained: list,
                  optimizer: torch.optim.Optimizer, scheduler, xb: torch.Tensor, yb: torch.Tensor,
                  autocast=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step as every run takes it: forward, task loss plus the estimator's loss term, backward,
    step, learning-rate schedule, the estimator's projection. Returns (loss, logits) without a host sync."""
    with autocast():
        logits = model(xb)
        loss = F.cross_entropy(loss_precision(logits), yb)
        extra = est.extra_loss(weight_qs) if est is not None else None
        total = loss + extra if extra is not None else loss
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    if constrained:
        with torch.no_grad():
            for q, w in constrained:
                q.estimator.constrain_(w, q)
    return loss, logits


# -- evaluation -----------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, est: Estimator | None, loader, mode: str, topk: bool, autocast) -> dict[str, float]:
    """Test metrics of ``model`` on ``loader`` in the estimator's evaluation ``mode`` (set for the pass through
    ``Estimator.evaluating``, the one channel by which the mode reaches it)."""
    model.eval()
    with est.evaluating(mode) if est is not None else contextlib.nullcontext():
        return _evaluate(model, est, loader, topk, autocast)


def _evaluate(model: nn.Module, est: Estimator | None, loader, topk: bool, autocast) -> dict[str, float]:
    dev = loader.device
    c1 = torch.zeros((), device=dev, dtype=torch.long)
    c5 = torch.zeros((), device=dev, dtype=torch.long)
    loss = torch.zeros((), device=dev)
    n = 0
    for xb, yb in loader.batches():
        with autocast():
            logits = est.predict(model, xb) if est is not None else model(xb)
        logits = loss_precision(logits)
        loss += F.cross_entropy(logits, yb, reduction="sum")
        if topk:
            top = logits.topk(5, dim=1).indices
            c5 += (top == yb[:, None]).any(dim=1).sum()
            c1 += (top[:, 0] == yb).sum()
        else:
            c1 += (logits.argmax(1) == yb).sum()
        n += yb.shape[0]
    out = {"top1": 100.0 * c1.item() / n, "loss": loss.item() / n}
    if topk:
        out["top5"] = 100.0 * c5.item() / n
    return out


# -- the loop --------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What one run's steps share: the spec, the built model and data, and the state a checkpoint saves."""

    spec: RunSpec
    device: torch.device
    loaders: Loaders
    model: nn.Module
    step_model: nn.Module  # the model, compiled when the config asks for it
    est: Estimator | None
    estimators: list[Estimator]  # the weight and activation estimators, each once
    weight_qs: list
    constrained: list
    autocast: Callable[[], Any]
    diag: DiagnosticsTracker | None
    ckpt_dir: Path | None
    reporter: Reporter
    callbacks: list[EpochCallback]
    stage_hooks: list[StageHook]
    topk: bool
    steps_per_epoch: int
    state: ckpt.RunState = field(default_factory=ckpt.RunState)
    status: str = "running"
    message: str = ""
    handoff: dict[int, dict[str, Any]] = field(default_factory=dict)  # stage -> its best weights, in memory
    params: dict[str, int] = field(default_factory=dict)

    @property
    def cfg(self) -> RunConfig:
        return self.spec.config

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.state.history


def train(spec: RunSpec, callbacks: list[EpochCallback] | None = None, reporter: Reporter | None = None,
          stage_hooks: list[StageHook] | None = None) -> RunResult:
    """Train one resolved run (``bench.spec.resolve``) to the end, or to divergence, and return its result.

    ``callbacks`` get every epoch's record (metrics); ``stage_hooks`` get ("start" | "end", stage index, model)
    at stage boundaries, after the hand-off of weights between stages.
    """
    if not isinstance(spec, RunSpec):
        raise TypeError(f"train() takes a RunSpec (bench.spec.resolve(config)), got {type(spec).__name__}")
    return fit(setup(spec, callbacks or [], reporter or Reporter(enabled=False), stage_hooks or []))


def setup(spec: RunSpec, callbacks: list[EpochCallback], reporter: Reporter, stage_hooks: list[StageHook]) -> _Run:
    """Everything before the first epoch: threads, device, seed, checkpoint folder, data, model, estimators, and
    the state of a resumed run."""
    cfg = spec.config
    # one thread unless asked: on a machine shared with other work, torch's default (every core) made a digits run
    # 3.5x slower than one thread (OpenMP threads wait on each other); suite trials get --cpus-per-trial (1)
    torch.set_num_threads(int(cfg.threads or 1))
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    ds = get_dataset(cfg.dataset)
    cuda = device.type == "cuda"
    channels_last = cfg.channels_last and cuda and len(ds.shape) == 3
    ckpt_dir = prepare_checkpoint_dir(cfg.checkpoint_dir, cfg.resume)  # before any data is read or epoch run
    loaders = make_loaders(cfg, ds, device, channels_last)
    model, est, act_est = build_model(cfg, ds)
    model.to(device)
    if channels_last:
        to_channels_last_(model)
    use_amp = cfg.amp and cuda

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    materialize_lazy(model, loaders.train, autocast)
    init_latents_(model)  # layers whose weights were lazy get their estimator state now
    constrained = [(q, w) for q, w in quantized_weights(model) if q.estimator.has_constraint]
    with torch.no_grad():
        for q, w in constrained:
            q.estimator.constrain_(w, q)
    n = len(loaders.train)
    run = _Run(spec, device, loaders, model, torch.compile(model) if cfg.compile else model,
               est, [e for e in dict.fromkeys([est, act_est]) if e is not None], estimator_quantizers(model, "weight"),
               constrained, autocast, DiagnosticsTracker(model) if cfg.diagnostics else None, ckpt_dir, reporter,
               callbacks, stage_hooks, ds.num_classes >= 10, min(n, cfg.limit_train_batches or n))
    if cfg.resume:
        run.state = _restore(run)
        run.status = run.state.status
    if run.status == "running" and (bad := nonfinite(model)):  # a plugin's init, a resumed checkpoint
        run.status, run.message = "diverged", f"{bad} before the first epoch; check the model's and estimator's init"
    run.params = count_params(model)
    reporter.start(cfg, run.params, device)
    return run


def to_channels_last_(model: nn.Module) -> None:
    """Every 4-D parameter and buffer of ``model`` to channels-last memory, in place; others stay as they are.

    Not ``model.to(memory_format=torch.channels_last)``: that converts 5-D tensors too and fails on them
    ("required rank 4 tensor"), and estimators may keep 5-D state (a sampling estimator's binary draws)."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)


def materialize_lazy(model: nn.Module, loader, autocast) -> None:
    """A plugin's lazily initialised parameters (``nn.UninitializedParameter``) get their shapes from one forward
    pass on two training images, in evaluation mode and without gradients, before the optimizer and the
    parameter counts see the model. Models without lazy parameters are left alone (no batch is drawn)."""
    if not any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        return
    xb, _ = next(iter(loader.batches(0, 0, 0)))
    model.eval()
    # the random state is the run's: a stochastic estimator's draws here must not shift its training
    with torch.no_grad(), autocast(), torch.random.fork_rng(devices=[xb.device] if xb.is_cuda else []):
        model(xb[:2])
    model.train()


def fit(run: _Run) -> RunResult:
    """Every stage from where the run stands, then the result and the final checkpoint."""
    if run.status == "diverged" and not run.history:  # before the first epoch: one record says so (trackers, Ray)
        run.history.append({"stage": 0, "stage_name": run.spec.stages[0].name, "epoch": 0, "global_epoch": 0,
                            "train_loss": float("nan"), "diverged": True})
        _publish(run, run.history[-1])
    for stage in run.spec.stages:
        if run.status == "running" and stage.index >= run.state.stage:
            run_stage(run, stage)
    return finish(run)


def finish(run: _Run) -> RunResult:
    """The run's ending: its status, result and final checkpoint (after its last stage, or its divergence)."""
    if run.status == "running":
        run.status = "finished"
    result = _result(run)
    if run.ckpt_dir is not None:
        ckpt.save(run.ckpt_dir / "final.pt", {"key": run.spec.key, "code": run.spec.code, "status": run.status,
                                              "history": run.history, "best": run.state.best.to_dict()})
        _final_model(run.ckpt_dir, run.model)
    run.reporter.finish(result)
    return result


def run_stage(run: _Run, stage: StagePlan) -> None:
    """One stage: its hyperparameters, optimizer and schedule (restored when resuming inside it), its epochs,
    then the hand-off of its best weights to the next stage where the config asks for it."""
    optimizer, scheduler, start = open_stage(run, stage)
    for epoch in range(start, stage.epochs):
        if not run_epoch(run, stage, epoch, optimizer, scheduler):
            break
    close_stage(run, stage)


def open_stage(run: _Run, stage: StagePlan) -> tuple[torch.optim.Optimizer, Any, int]:
    """A stage's start: the estimators hear it, its optimizer and schedule (restored when resuming inside it);
    returns them and the epoch to start from."""
    for e in run.estimators:  # a stage's hyperparameter overrides are the weight estimator's
        e.begin_stage(stage.index, Stage(stage.name, 1.0, stage.estimator if e is run.est else {}))
    optimizer = make_optimizer(run.model, stage)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s, st=stage, n=run.steps_per_epoch: lr_factor(s, n, st))
    for hook in run.stage_hooks:
        hook("start", stage.index, run.model)
    start = 0
    if stage.index == run.state.stage and run.state.epoch > 0:
        start = run.state.epoch
        optimizer.load_state_dict(run.state.optimizer)
        scheduler.load_state_dict(run.state.scheduler)
    return optimizer, scheduler, start


def close_stage(run: _Run, stage: StagePlan) -> None:
    """A stage's end: the hand-off of its best weights where the config asks for it, the hooks, the state."""
    last = stage.index == len(run.spec.stages) - 1
    if run.status == "running" and not last and run.cfg.stage_handoff == "best":
        file = run.ckpt_dir / f"best_stage{stage.index}.pt" if run.ckpt_dir else None
        _hand_off(run.model, run.handoff.get(stage.index), file, run.device)
    for hook in run.stage_hooks:
        hook("end", stage.index, run.model)
    run.state = dataclasses.replace(run.state, stage=stage.index + 1, epoch=0, optimizer=None, scheduler=None)


def run_epoch(run: _Run, stage: StagePlan, epoch: int, optimizer, scheduler) -> bool:
    """Train one epoch, evaluate, collect diagnostics, checkpoint, tell the callbacks; False when it diverged."""
    progress = Progress(stage.index, stage.name, epoch, stage.epochs)
    for e in run.estimators:
        e.set_progress(progress)
    start = EpochStart.take(run.model, optimizer, scheduler)
    record = train_epoch(run, stage, epoch, optimizer, scheduler)
    return close_epoch(run, stage, epoch, optimizer, scheduler, record, start)


def close_epoch(run: _Run, stage: StagePlan, epoch: int, optimizer, scheduler, record: dict[str, Any],
                start: EpochStart) -> bool:
    """After an epoch's training steps (``record``): the divergence check, evaluation, diagnostics, best epoch,
    hand-off weights, checkpoint and callbacks; False when it diverged."""
    bad = nonfinite(run.model)  # a binarizer maps NaN/inf to +-1: the loss alone can miss them
    if bad or not math.isfinite(record["train_loss"]):
        # the epoch again from its start, checked step by step: the layer where it went non-finite, not the first
        # of the many that hold NaN once it has spread
        where = locate_nonfinite(run, stage, epoch, optimizer, scheduler, start)
        what = where or bad or f"loss became {record['train_loss']}"
        run.status = "diverged"
        run.message = (f"{what} in stage {stage.name} epoch {epoch + 1}; lower the learning rate (lr={stage.lr}) or "
                       "check the estimator's hyperparameters")
        record["diverged"] = True
        run.history.append(record)
        _publish(run, record)
        return False
    record.update(evaluate_epoch(run.model, run.est, run.loaders, list(run.spec.eval_modes), run.topk, run.autocast))
    if run.diag is not None:
        record.update(run.diag.collect())
    run.history.append(record)
    last = stage.index == len(run.spec.stages) - 1
    best, improved = _update_best(run.state.best, record, stage.index, last)
    run.state = dataclasses.replace(run.state, best=best)
    if improved and not last and run.cfg.stage_handoff == "best":
        run.handoff[stage.index] = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        if run.ckpt_dir is not None:  # on disk too, so that a resumed run hands the same weights on
            ckpt.save(run.ckpt_dir / f"best_stage{stage.index}.pt", {"model": run.handoff[stage.index]})
    if run.ckpt_dir is not None:
        _save(run, optimizer, scheduler, stage.index, epoch + 1)
    _publish(run, record)  # after the checkpoint: a callback may hand it on (Ray Tune)
    return True


@dataclass(frozen=True)
class EpochStart:
    """The state an epoch starts from (model, optimizer, schedule, random state), kept in memory for one epoch so
    that a diverged epoch can be replayed step by step. A copy of the parameters per epoch, no per-step cost."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: torch.Tensor
    cuda_rng: list[torch.Tensor]

    @classmethod
    def take(cls, model: nn.Module, optimizer, scheduler) -> EpochStart:
        return cls({k: v.detach().clone() for k, v in model.state_dict().items()},
                   copy.deepcopy(optimizer.state_dict()), scheduler.state_dict(), torch.get_rng_state(),
                   torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])

    def restore(self, model: nn.Module, optimizer, scheduler) -> None:
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        scheduler.load_state_dict(self.scheduler)
        torch.set_rng_state(self.rng)
        if self.cuda_rng:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def locate_nonfinite(run: _Run, stage: StagePlan, epoch: int, optimizer, scheduler, start: EpochStart) -> str:
    """Replay the epoch from ``start``, one host sync per step, and say where a NaN/inf first appeared: the input or
    the weight a binary layer binarized, or a tensor the step's update made non-finite. "" if the replay finds none
    (a GPU's non-deterministic kernels may not repeat it)."""
    from bench.diagnostics import layer_paths
    from bench.layers import binary_layers

    start.restore(run.model, optimizer, scheduler)
    paths, found = layer_paths(run.model), []

    def check(name: str):
        def hook(layer, args):
            for what, t in (("input", args[0]), ("weight", layer.weight)):
                if not found and not bool(torch.isfinite(t).all()):
                    found.append(f"the {what} of layer {paths.get(name, name)!r} holds {int(t.isnan().sum())} NaN "
                                 f"and {int(t.isinf().sum())} inf of {t.numel()}")
        return hook

    hooks = [layer.register_forward_pre_hook(check(name)) for name, layer in binary_layers(run.model)]
    try:
        run.model.train()
        for step, (xb, yb) in enumerate(run.loaders.train.batches(run.cfg.seed, stage.index, epoch)):
            if step >= run.steps_per_epoch:
                break
            loss, _ = training_step(run.model, run.est, run.weight_qs, run.constrained, optimizer, scheduler, xb, yb,
                                    run.autocast)
            after = found[0] if found else nonfinite(run.model) or ("" if bool(torch.isfinite(loss)) else "the loss")
            if after:
                return f"{after} at step {step + 1}" if found else f"{after} after the update of step {step + 1}"
    finally:
        for h in hooks:
            h.remove()
    return ""


def _publish(run: _Run, record: dict[str, Any]) -> None:
    run.reporter.epoch(record)
    for cb in run.callbacks:
        cb(record)


def train_epoch(run: _Run, stage: StagePlan, epoch: int, optimizer, scheduler) -> dict[str, Any]:
    """The optimisation steps of one epoch; loss and accuracy accumulate on the device, read once at the end."""
    run.model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    seen = 0
    bar = run.reporter.epoch_bar(stage, epoch, run.steps_per_epoch)
    lr_used = optimizer.param_groups[0]["lr"]
    for step, (xb, yb) in enumerate(run.loaders.train.batches(run.cfg.seed, stage.index, epoch)):
        if step >= run.steps_per_epoch:
            break
        lr_used = optimizer.param_groups[0]["lr"]
        loss, logits = training_step(run.step_model, run.est, run.weight_qs, run.constrained, optimizer, scheduler,
                                     xb, yb, run.autocast)
        loss_sum += loss.detach() * yb.shape[0]
        correct += (logits.detach().argmax(1) == yb).sum()
        seen += yb.shape[0]
        bar.update(step + 1)
    bar.close()
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return {"stage": stage.index, "stage_name": stage.name, "epoch": epoch, "global_epoch": len(run.history),
            "lr": lr_used, "train_loss": loss_sum.item() / max(1, seen),
            "train_top1": 100.0 * correct.item() / max(1, seen), "epoch_seconds": time.perf_counter() - t0}


def evaluate_epoch(model: nn.Module, est: Estimator | None, loaders: Loaders, eval_modes: list[str], topk: bool,
                   autocast) -> dict[str, float]:
    """The epoch's test metrics in every evaluation mode (the first is the headline, ``test_*``) and, with a
    validation split, the headline mode's ``val_top1``."""
    t1 = time.perf_counter()
    out: dict[str, float] = {}
    for i, mode in enumerate(eval_modes):
        res = evaluate(model, est, loaders.test, mode, topk, autocast)
        prefix = "test" if i == 0 else f"test_{mode}"
        out[f"{prefix}_top1"] = res["top1"]
        out[f"{prefix}_loss"] = res["loss"]
        if topk:
            out[f"{prefix}_top5"] = res["top5"]
        if i == 0 and len(eval_modes) > 1:
            out[f"test_{mode}_top1"] = res["top1"]
    if loaders.val is not None:
        res = evaluate(model, est, loaders.val, eval_modes[0], False, autocast)
        out["val_top1"], out["val_loss"] = res["top1"], res["loss"]
    out["eval_seconds"] = time.perf_counter() - t1
    return out


def _update_best(best: ckpt.Best, record: dict[str, Any], si: int, last_stage: bool) -> tuple[ckpt.Best, bool]:
    """Track the best test epoch (what the papers report) and the validation-selected one of the last stage, and
    the stage's best epoch for the hand-off (by validation when there is a split, else by test, as the official
    code of two-stage methods does). Returns the best epochs and whether this epoch is the stage's best so far."""
    epoch = record["epoch"]
    if last_stage and record["test_top1"] > (best.top1 if best.top1 is not None else -1.0):
        best = dataclasses.replace(best, top1=record["test_top1"], top5=record.get("test_top5"), epoch=epoch)
    if last_stage and "val_top1" in record and record["val_top1"] > (best.val_top1 if best.val_top1 is not None
                                                                       else -1.0):
        best = dataclasses.replace(best, val_top1=record["val_top1"], selected_top1=record["test_top1"],
                                   selected_epoch=epoch)
    score = record.get("val_top1", record["test_top1"])
    if score > best.stages.get(si, -1.0):
        return dataclasses.replace(best, stages={**best.stages, si: score}), True
    return best, False


def _hand_off(model: nn.Module, in_memory: dict[str, Any] | None, file: Path | None, device) -> None:
    """Load the stage's best weights before the next stage: from memory, else (after a resume) from its file."""
    if in_memory is not None:
        model.load_state_dict(in_memory)
    elif file is not None and file.exists():
        model.load_state_dict(_field(ckpt.load(file, device), "model", file))


def quantized_weights(model: nn.Module):
    from bench.layers import binary_layers

    return [(layer.weight_quantizer, layer.weight) for _, layer in binary_layers(model)]


def _result(run: _Run) -> RunResult:
    evals = [h for h in run.history if "test_top1" in h]
    last = evals[-1] if evals else {}
    best = run.state.best
    modes = {m: last.get(f"test_{m}_top1", last.get("test_top1", float("nan"))) for m in run.spec.eval_modes}
    timed = [h["epoch_seconds"] for h in run.history if "epoch_seconds" in h]
    return RunResult(
        selected_top1=best.selected_top1, selected_epoch=_one_based(best.selected_epoch),
        late_gain=late_gain([h["test_top1"] for h in evals]),
        status=run.status, config=run.cfg.to_dict(), top1=last.get("test_top1", float("nan")),
        best_top1=best.top1 if best.top1 is not None else float("nan"), best_epoch=_one_based(best.epoch),
        top5=last.get("test_top5"), best_top5=best.top5, eval_modes=modes, history=run.history,
        epoch_seconds=float(np.median(timed)) if timed else float("nan"), params=run.params, env=describe(run.device),
        message=run.message, stages=[s.to_dict() for s in run.spec.stages], data_source=run.loaders.source,
        data_digest=run.loaders.digest,
    )


def _one_based(epoch: int | None) -> int | None:
    """A 0-based loop index as the epoch number a person reads (the console's, the JSON's, MLflow's)."""
    return None if epoch is None else int(epoch) + 1


def late_gain(top1_per_epoch: list[float]) -> float | None:
    """Test top-1 at the last epoch minus at the epoch where the last quarter of the epochs begins (points)."""
    n = len(top1_per_epoch)
    k = max(1, round(n / 4))
    return float(top1_per_epoch[-1] - top1_per_epoch[-1 - k]) if n > k else None


def _save(run: _Run, optimizer, scheduler, stage: int, epoch: int) -> None:
    state = dataclasses.replace(run.state, stage=stage, epoch=epoch, optimizer=optimizer.state_dict(),
                                scheduler=scheduler.state_dict(), status="running")
    state.save(run.ckpt_dir / "last.pt", run.spec.key, {
        "code": run.spec.code, "model": run.model.state_dict(), "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "diag": run.diag.state_dict() if run.diag is not None else {},
    })


def _final_model(ckpt_dir: Path, model: nn.Module) -> None:
    ckpt.save(ckpt_dir / "model.pt", {"model": model.state_dict()})


#: the files a run writes into its checkpoint folder; a fresh run removes them, and nothing else, first
CHECKPOINT_FILES = ("last.pt", "final.pt", "model.pt", "best_stage*.pt", "*.pt.tmp")
#: written into every checkpoint folder binbench uses: only there are files of those names binbench's own
CHECKPOINT_MARKER = ".binbench-checkpoints"


def prepare_checkpoint_dir(checkpoint_dir: str | None, resume: bool) -> Path | None:
    """The checkpoint folder, checked and created before training starts.

    A fresh run (no ``resume``) removes the checkpoint files an earlier run left there (``CHECKPOINT_FILES``;
    other files stay): otherwise that run's ``final.pt`` would outlive this one, and a later ``--resume`` of this
    run, killed early, would report the earlier run's ending as its own. Files of those names are removed only
    from a folder that carries binbench's marker (``CHECKPOINT_MARKER``); in any other folder they may be the
    user's (a ``model.pt`` in a home folder), and the run is refused instead.
    """
    if not checkpoint_dir:
        if resume:
            raise ConfigError("--resume needs --checkpoint-dir (where the run left its checkpoints)")
        return None
    d = Path(checkpoint_dir)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"--checkpoint-dir {d} is a file, not a folder: pass a folder (it is created if missing)")
    try:
        d.mkdir(parents=True, exist_ok=True)
        if not resume:
            old = sorted({f for pattern in CHECKPOINT_FILES for f in d.glob(pattern) if f.is_file()})
            if old and not (d / CHECKPOINT_MARKER).exists():
                raise ConfigError(f"--checkpoint-dir {d} already holds {', '.join(f.name for f in old)}, not marked "
                                  "as binbench's: pass an empty folder, delete them, or add --resume to continue "
                                  "that run")
            for f in old:
                f.unlink()
        (d / CHECKPOINT_MARKER).touch()
    except OSError as exc:
        raise ConfigError(f"cannot use --checkpoint-dir {d} ({exc.strerror or exc}): pass a writable folder") from None
    return d


def _field(saved: dict[str, Any], key: str, file: Path) -> Any:
    if key not in saved:
        raise ckpt.CheckpointError(f"{file} is not a binbench checkpoint (no {key!r} in it): delete it, or rerun "
                                   "without --resume")
    return saved[key]


def _restore(run: _Run) -> ckpt.RunState:
    """The state of the run in its checkpoint folder, loaded into its model. The ending recorded in ``final.pt``
    counts only when it belongs to this run (its key) and, for "finished", when ``last.pt`` shows every epoch
    of the plan done; otherwise training continues from ``last.pt``."""
    final, last = run.ckpt_dir / "final.pt", run.ckpt_dir / "last.pt"
    if not last.exists():
        return run.state  # nothing to resume: start from scratch (binbench run --resume says so)
    state, saved = ckpt.RunState.load(last)
    if _field(saved, "key", last) != run.spec.key:
        raise ConfigError(f"the checkpoint in {run.ckpt_dir} was written by a different configuration; "
                          "drop --resume or use another --checkpoint-dir")
    if saved.get("code") != run.spec.code:  # the same experiment, other estimator code: its epochs do not count
        print(f"binbench: the checkpoint in {run.ckpt_dir} was written by other estimator code "
              f"({', '.join(run.spec.estimators.values())}); training from scratch", file=sys.stderr)
        return run.state
    try:
        run.model.load_state_dict(_field(saved, "model", last))
        torch.set_rng_state(_field(saved, "rng", last))
        if saved.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        if run.diag is not None:
            run.diag.load_state_dict(saved.get("diag", {}))
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise ckpt.CheckpointError(f"{last} does not fit this run's model ({type(exc).__name__}): delete it, or "
                                   "rerun without --resume") from None
    state = dataclasses.replace(state, status="running")
    if final.exists():
        fin, plan = ckpt.load(final), run.spec.stages
        done = (state.stage == len(plan) - 1 and state.epoch >= plan[-1].epochs
                and len(state.history) == sum(p.epochs for p in plan))
        if fin.get("key") == saved["key"] and (fin.get("status") == "diverged" or done):
            history = fin.get("history", state.history) if fin["status"] == "diverged" else state.history
            state = dataclasses.replace(state, status=fin["status"], history=history)
    return state
