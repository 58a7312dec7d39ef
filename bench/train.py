"""The one training loop every estimator, ``binbench run`` and the suites share.

``train(config) -> RunResult``. Per epoch: the estimator hears the progress, the model trains on
device-resident batches (no host sync per step: loss and accuracy accumulate on the device and are read once
per epoch), every evaluation mode of the estimator is measured, diagnostics are collected, a checkpoint is
written. A NaN/inf loss ends the run with status ``diverged``.
"""

from __future__ import annotations

import contextlib
import math
import random
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
from bench.config import RunConfig, resolve_config
from bench.data import DatasetSpec, get_dataset, load_dataset
from bench.data.loader import ResidentLoader
from bench.diagnostics import DiagnosticsTracker
from bench.env import describe
from bench.errors import ConfigError
from bench.estimator import Estimator, Progress, Stage, create_estimator, estimator_quantizers
from bench.layers import BinarySpec
from bench.models import create_model
from bench.progress import Reporter

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
        return weight, weight  # one estimator binarizes both (ReSTE, IR-Net, DSQ in their own recipes)
    return weight, create_estimator(act_name, **cfg.activation_hparams)


def build_model(cfg: RunConfig, ds: DatasetSpec) -> tuple[nn.Module, Estimator | None, Estimator | None]:
    weight, act = build_estimators(cfg)
    scaling = cfg.scaling if weight is not None else "none"
    spec = BinarySpec(weight, act, scaling or "none")
    model = create_model(cfg.model, spec, ds.num_classes, ds.shape, **cfg.model_args)
    return model, weight, act


def plan_stages(cfg: RunConfig, est: Estimator | None) -> list[dict[str, Any]]:
    """Concrete stages: name, epochs and optimizer settings, from the estimator's stages and the config."""
    stages: list[Stage] = est.stages() if est is not None else [Stage()]
    overrides = cfg.stages or []
    if len(overrides) > len(stages):
        raise ConfigError(f"config gives {len(overrides)} stages but {cfg.estimator!r} trains in {len(stages)} "
                          f"({', '.join(s.name for s in stages)})")
    total = int(cfg.epochs or 1)
    if total < len(stages):
        raise ConfigError(f"{cfg.estimator!r} trains in {len(stages)} stages ({', '.join(s.name for s in stages)}): "
                          f"give --epochs >= {len(stages)}")
    cum, bounds = 0.0, [0]
    for s in stages:
        cum += s.fraction
        bounds.append(round(total * cum / sum(x.fraction for x in stages)))
    plan = []
    for i, s in enumerate(stages):
        ov = dict(overrides[i]) if i < len(overrides) else {}
        unknown = set(ov) - {"epochs", "optimizer", "lr", "momentum", "weight_decay", "lr_schedule", "warmup_epochs",
                             "estimator", "name"}
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)} in stage {i} ({s.name}); valid: epochs, optimizer, "
                              "lr, momentum, weight_decay, lr_schedule, warmup_epochs, estimator")
        epochs = int(ov.get("epochs", max(1, bounds[i + 1] - bounds[i])))
        plan.append({
            "index": i, "name": s.name, "epochs": epochs,
            "optimizer": ov.get("optimizer", cfg.optimizer), "lr": float(ov.get("lr", cfg.lr)),
            "momentum": float(ov.get("momentum", cfg.momentum)),
            "weight_decay": float(ov.get("weight_decay", cfg.weight_decay)),
            "lr_schedule": ov.get("lr_schedule", cfg.lr_schedule),
            "warmup_epochs": int(ov.get("warmup_epochs", cfg.warmup_epochs or 0)),
            "estimator": {**s.overrides, **ov.get("estimator", {})},
        })
    return plan


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


def make_optimizer(model: nn.Module, stage: dict[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if stage["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=stage["lr"], momentum=stage["momentum"], weight_decay=stage["weight_decay"])
    if stage["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=stage["lr"], weight_decay=stage["weight_decay"])
    raise ConfigError(f"unknown optimizer {stage['optimizer']!r}; valid: sgd, adam")


def lr_factor(step: int, steps_per_epoch: int, stage: dict[str, Any]) -> float:
    """Per-iteration learning-rate factor: linear warm-up, then cosine to 0 / step decay / constant."""
    total = max(1, stage["epochs"] * steps_per_epoch)
    warm = min(stage["warmup_epochs"] * steps_per_epoch, total - 1)
    if step < warm:
        return (step + 1) / (warm + 1)
    t = (step - warm) / max(1, total - warm)
    if stage["lr_schedule"] == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if stage["lr_schedule"] == "step":
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


def training_step(model: nn.Module, est: Estimator | None, weight_qs: list, constrained: list,
                  optimizer: torch.optim.Optimizer, scheduler, xb: torch.Tensor, yb: torch.Tensor,
                  autocast=contextlib.nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step as every run takes it: forward, task loss plus the estimator's loss term, backward,
    step, learning-rate schedule, the estimator's projection. Returns (loss, logits) without a host sync."""
    with autocast():
        logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb)
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
    model.eval()
    if est is not None:
        est.eval_mode = mode
    dev = loader.device
    c1 = torch.zeros((), device=dev, dtype=torch.long)
    c5 = torch.zeros((), device=dev, dtype=torch.long)
    loss = torch.zeros((), device=dev)
    n = 0
    for xb, yb in loader.batches():
        with autocast():
            logits = est.predict(model, xb, mode) if est is not None else model(xb)
        logits = logits.float()
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
    if est is not None:
        est.eval_mode = est.eval_modes[0]
    return out


# -- the loop --------------------------------------------------------------------------------------------
def train(config: RunConfig | dict[str, Any], callbacks: list[EpochCallback] | None = None,
          reporter: Reporter | None = None, stage_hooks: list[StageHook] | None = None) -> RunResult:
    """Train one configuration to the end (or to divergence) and return its result.

    ``callbacks`` get every epoch's record (metrics); ``stage_hooks`` get ("start" | "end", stage index, model)
    at stage boundaries, after the hand-off of weights between stages.
    """
    stage_hooks = stage_hooks or []
    cfg = resolve_config(config)
    reporter = reporter or Reporter(enabled=False)
    callbacks = callbacks or []
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    ds = get_dataset(cfg.dataset)
    cuda = device.type == "cuda"
    channels_last = cfg.channels_last and cuda and len(ds.shape) == 3
    ckpt_dir = prepare_checkpoint_dir(cfg.checkpoint_dir, cfg.resume)  # before any data is read or epoch run
    loaders = make_loaders(cfg, ds, device, channels_last)
    model, est, act_est = build_model(cfg, ds)
    model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    step_model = torch.compile(model) if cfg.compile else model
    use_amp = cfg.amp and cuda

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    estimators = [e for e in dict.fromkeys([est, act_est]) if e is not None]
    weight_qs = estimator_quantizers(model, "weight")
    constrained = [(q, layer_weight) for q, layer_weight in quantized_weights(model) if q.estimator.has_constraint]
    for q, w in constrained:
        with torch.no_grad():
            q.estimator.constrain_(w, q)
    plan = plan_stages(cfg, est)
    eval_modes = list(cfg.eval_modes or (est.eval_modes if est is not None else ("default",)))
    topk = ds.num_classes >= 10
    diag = DiagnosticsTracker(model) if cfg.diagnostics else None
    state = {"stage": 0, "epoch": 0, "history": [], "best": {}, "status": "running"}
    if cfg.resume:
        if ckpt_dir is None:
            raise ConfigError("--resume needs --checkpoint-dir (where the run left its checkpoints)")
        state = _restore(ckpt_dir, cfg, model, diag, state, plan)
    env = describe(device)
    params = count_params(model)
    reporter.start(cfg, params, device)
    history: list[dict[str, Any]] = state["history"]
    status = state["status"] if state["status"] in ("finished", "diverged") else "running"
    message = ""
    train_loader = loaders.train
    steps_per_epoch = len(train_loader) if not cfg.limit_train_batches else min(len(train_loader),
                                                                                cfg.limit_train_batches)
    handoff: dict[int, dict[str, Any]] = {}  # stage -> the best state dict, kept in memory for the hand-off
    for stage in plan:
        si = stage["index"]
        if status != "running" or si < state["stage"]:
            continue
        for e in estimators:  # a stage's hyperparameter overrides are the weight estimator's
            e.begin_stage(si, Stage(stage["name"], 1.0, stage["estimator"] if e is est else {}))
        optimizer = make_optimizer(model, stage)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s, st=stage: lr_factor(s, steps_per_epoch, st))
        for hook in stage_hooks:
            hook("start", si, model)
        start_epoch = 0
        if si == state["stage"] and state["epoch"] > 0:
            start_epoch = state["epoch"]
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        for epoch in range(start_epoch, stage["epochs"]):
            progress = Progress(si, stage["name"], epoch, stage["epochs"])
            for e in estimators:
                e.set_progress(progress)
            model.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            bar = reporter.epoch_bar(si, stage, epoch, steps_per_epoch)
            lr_used = optimizer.param_groups[0]["lr"]
            for step, (xb, yb) in enumerate(train_loader.batches(cfg.seed, si, epoch)):
                if step >= steps_per_epoch:
                    break
                lr_used = optimizer.param_groups[0]["lr"]
                loss, logits = training_step(step_model, est, weight_qs, constrained, optimizer, scheduler, xb, yb,
                                             autocast)
                loss_sum += loss.detach() * yb.shape[0]
                correct += (logits.detach().argmax(1) == yb).sum()
                seen += yb.shape[0]
                bar.update(step + 1)
            bar.close()
            if cuda:
                torch.cuda.synchronize()
            train_seconds = time.perf_counter() - t0
            train_loss = loss_sum.item() / max(1, seen)
            record: dict[str, Any] = {
                "stage": si, "stage_name": stage["name"], "epoch": epoch, "global_epoch": len(history),
                "lr": lr_used, "train_loss": train_loss,
                "train_top1": 100.0 * correct.item() / max(1, seen), "epoch_seconds": train_seconds,
            }
            if not math.isfinite(train_loss):
                status = "diverged"
                message = (f"loss became {train_loss} in stage {stage['name']} epoch {epoch}; lower the learning "
                           f"rate (lr={stage['lr']}) or check the estimator's hyperparameters")
                record["diverged"] = True
                history.append(record)
                reporter.epoch(record)
                for cb in callbacks:
                    cb(record)
                break
            record.update(evaluate_epoch(model, est, loaders, eval_modes, topk, autocast))
            if diag is not None:
                record.update(diag.collect())
            history.append(record)
            if _update_best(state["best"], record, si, last_stage=si == len(plan) - 1) and si < len(plan) - 1 \
                    and stage_handoff(cfg) == "best":
                handoff[si] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if ckpt_dir is not None:  # on disk too, so that a resumed run hands the same weights on
                    ckpt.save(ckpt_dir / f"best_stage{si}.pt", {"model": handoff[si]})
            if ckpt_dir is not None:
                _save(ckpt_dir, cfg, model, optimizer, scheduler, diag, si, epoch + 1, history, state["best"],
                      "running")
            reporter.epoch(record)
            for cb in callbacks:  # after the checkpoint: a callback may hand it on (Ray Tune)
                cb(record)
        if status == "running" and si < len(plan) - 1 and stage_handoff(cfg) == "best":
            _hand_off(model, handoff.get(si), ckpt_dir / f"best_stage{si}.pt" if ckpt_dir else None, device)
        for hook in stage_hooks:
            hook("end", si, model)
        state["stage"], state["epoch"] = si + 1, 0
    if status == "running":
        status = "finished"
    result = _result(cfg, status, message, history, state["best"], eval_modes, params, env, plan)
    result.data_source, result.data_digest = loaders.source, loaders.digest
    if ckpt_dir is not None:
        ckpt.save(ckpt_dir / "final.pt", {"config": repr(_fingerprint(cfg)), "status": status, "history": history,
                                          "best": state["best"]})
        _final_model(ckpt_dir, model)
    reporter.finish(result)
    return result


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


def _update_best(best: dict[str, Any], record: dict[str, Any], si: int, last_stage: bool) -> bool:
    """Track the best test epoch (what the papers report) and the validation-selected one of the last stage, and
    the stage's best epoch for the hand-off (by validation when there is a split, else by test, as the official
    BiPer code). Returns True when this epoch is the stage's best so far."""
    epoch = record["epoch"]
    if last_stage and record["test_top1"] > best.get("top1", -1.0):
        best.update(top1=record["test_top1"], top5=record.get("test_top5"), epoch=epoch)
    if last_stage and "val_top1" in record and record["val_top1"] > best.get("val_top1", -1.0):
        best.update(val_top1=record["val_top1"], selected_top1=record["test_top1"], selected_epoch=epoch)
    score = record.get("val_top1", record["test_top1"])
    if score > best.get(f"stage{si}", -1.0):
        best[f"stage{si}"] = score
        return True
    return False


def _hand_off(model: nn.Module, in_memory: dict[str, Any] | None, file: Path | None, device) -> None:
    """Load the stage's best weights before the next stage: from memory, else (after a resume) from its file."""
    if in_memory is not None:
        model.load_state_dict(in_memory)
    elif file is not None and file.exists():
        model.load_state_dict(_field(ckpt.load(file, device), "model", file))


def stage_handoff(cfg: RunConfig) -> str:
    return cfg.stage_handoff or "last"


def quantized_weights(model: nn.Module):
    from bench.layers import binary_layers

    return [(layer.weight_quantizer, layer.weight) for _, layer in binary_layers(model)]


def _result(cfg, status, message, history, best, eval_modes, params, env, plan) -> RunResult:
    evals = [h for h in history if "test_top1" in h]
    last = evals[-1] if evals else {}
    modes = {m: last.get(f"test_{m}_top1", last.get("test_top1", float("nan"))) for m in eval_modes}
    timed = [h["epoch_seconds"] for h in history]
    return RunResult(
        selected_top1=best.get("selected_top1"), selected_epoch=_one_based(best.get("selected_epoch")),
        late_gain=late_gain([h["test_top1"] for h in evals]),
        status=status, config=cfg.to_dict(), top1=last.get("test_top1", float("nan")),
        best_top1=best.get("top1", float("nan")), best_epoch=_one_based(best.get("epoch")),
        top5=last.get("test_top5"), best_top5=best.get("top5"), eval_modes=modes, history=history,
        epoch_seconds=float(np.median(timed)) if timed else float("nan"), params=params, env=env,
        message=message, stages=plan,
    )


def _one_based(epoch: int | None) -> int | None:
    """A 0-based loop index as the epoch number a person reads (the console's, the JSON's, MLflow's)."""
    return None if epoch is None else int(epoch) + 1


def late_gain(top1_per_epoch: list[float]) -> float | None:
    """Test top-1 at the last epoch minus at the epoch where the last quarter of the epochs begins (points)."""
    n = len(top1_per_epoch)
    k = max(1, round(n / 4))
    return float(top1_per_epoch[-1] - top1_per_epoch[-1 - k]) if n > k else None


def _fingerprint(cfg: RunConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    for k in ("resume", "checkpoint_dir", "threads", "device", "data_root", "download", "eval_batch_size"):
        d.pop(k, None)
    return d


def _save(ckpt_dir: Path, cfg, model, optimizer, scheduler, diag, stage: int, epoch: int, history, best,
          status: str) -> None:
    ckpt.save(ckpt_dir / "last.pt", {
        "config": repr(_fingerprint(cfg)), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "stage": stage, "epoch": epoch, "history": history, "best": best,
        "status": status, "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "diag": diag.state_dict() if diag is not None else {},
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


def _restore(ckpt_dir: Path, cfg: RunConfig, model: nn.Module, diag, state: dict[str, Any],
             plan: list[dict[str, Any]]) -> dict[str, Any]:
    """The state of the run in ``ckpt_dir``, loaded into ``model``. The ending recorded in ``final.pt`` counts
    only when it belongs to this configuration and, for "finished", when ``last.pt`` shows every epoch of this
    run's plan done; otherwise training continues from ``last.pt``."""
    final, last = ckpt_dir / "final.pt", ckpt_dir / "last.pt"
    if not last.exists():
        return state  # nothing to resume: start from scratch
    saved = ckpt.load(last)
    if _field(saved, "config", last) != repr(_fingerprint(cfg)):
        raise ConfigError(f"the checkpoint in {ckpt_dir} was written by a different configuration; "
                          "drop --resume or use another --checkpoint-dir")
    try:
        model.load_state_dict(_field(saved, "model", last))
        torch.set_rng_state(_field(saved, "rng", last))
        if saved.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        if diag is not None:
            diag.load_state_dict(saved.get("diag", {}))
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise ckpt.CheckpointError(f"{last} does not fit this run's model ({type(exc).__name__}): delete it, or "
                                   "rerun without --resume") from None
    state = {k: _field(saved, k, last) for k in ("stage", "epoch", "history", "best", "optimizer", "scheduler")}
    state["status"] = "running"
    if final.exists():
        fin = ckpt.load(final)
        done = (state["stage"] == len(plan) - 1 and state["epoch"] >= plan[-1]["epochs"]
                and len(state["history"]) == sum(p["epochs"] for p in plan))
        if fin.get("config") == saved["config"] and (fin.get("status") == "diverged" or done):
            state["status"] = fin["status"]
            if fin["status"] == "diverged":
                state["history"] = fin.get("history", state["history"])
    return state
