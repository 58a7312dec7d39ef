"""Export a trained run and check the export: the same prediction as the simulated evaluation on every test image.

``load_run(config, weights)`` rebuilds a run's model from its resolved config and final weights (as ``binbench
evaluate`` does) with its estimators as they ended training, in the estimator's export mode (the headline mode, or
the deterministic mode a stochastic estimator declares, such as its mean network); ``export_run`` writes the file;
``check_export`` runs the bit-level network and the simulated model on the test set side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.errors import BinbenchError
from bench.export import fileformat
from bench.export.bitlevel import BitNet
from bench.export.graph import build_graph

#: a simulated value this close to its sign's threshold, or a top-2 logit gap this small, can round either way
NEAR = 1e-4


@dataclass(frozen=True)
class LoadedRun:
    """A recorded run's model, rebuilt on the CPU, its estimator in export mode, and its test data."""

    config: dict[str, Any]
    key: str
    model: nn.Module
    estimator: Any
    mode: str
    test: Any
    dataset: Any


@dataclass(frozen=True)
class Check:
    """The exported network against the simulated one on the test set."""

    images: int
    agree: int
    top1_simulated: float
    top1_exported: float
    reasons: dict[str, int]  # why the disagreeing images disagree, counted

    @property
    def identical(self) -> bool:
        return self.agree == self.images

    def summary(self) -> str:
        if self.identical:
            return f"identical predictions on all {self.images} test images"
        why = "; ".join(f"{n}: {r}" for r, n in self.reasons.items())
        return f"{self.images - self.agree} of {self.images} test images predicted differently ({why})"


def export_mode(est: Any) -> str:
    """The evaluation mode whose network is exported; a stochastic estimator must name a deterministic one."""
    if est is None:
        return "default"
    mode = getattr(type(est), "export_mode", None) or type(est).eval_modes[0]
    if est.stochastic and getattr(type(est), "export_mode", None) is None:
        raise BinbenchError(f"estimator {est.name!r} samples its binary weights and declares no export_mode (a "
                            "deterministic evaluation mode, such as the mean network): it cannot be exported")
    return mode


def load_run(config: dict[str, Any], weights: dict[str, Any], key: str | None = None,
             data_root: str | None = None) -> LoadedRun:
    """A run's model from its resolved config and final ``state_dict``, on the CPU, ready to export."""
    from bench.data import get_dataset
    from bench.estimator import Progress, Stage
    from bench.spec import recorded_values, resolve
    from bench.train import build_model, make_loaders, seed_everything

    values = {**recorded_values(config), "resume": False, "checkpoint_dir": None, "download": False, "device": "cpu"}
    if data_root:
        values["data_root"] = data_root
    spec = resolve(values)
    cfg = spec.config
    seed_everything(cfg.seed)
    ds = get_dataset(cfg.dataset)
    loaders = make_loaders(cfg, ds, torch.device("cpu"), channels_last=False)
    model, est, act = build_model(cfg, ds)
    model.load_state_dict(weights)
    last = spec.stages[-1]
    for e in [e for e in dict.fromkeys([est, act]) if e is not None]:  # the estimators as they ended training
        e.begin_stage(last.index, Stage(last.name, 1.0, last.estimator if e is est else {}))
        e.set_progress(Progress(last.index, last.name, last.epochs - 1, last.epochs))
    mode = export_mode(est)
    if est is not None:  # the loaded run's estimator stays in the exported network's mode
        est.eval_mode = mode
    model.eval()
    return LoadedRun(cfg.to_dict(), key or spec.key, model, est, mode, loaders.test, ds)


def export_run(run: LoadedRun, path: str | Path) -> Path:
    """Write the run's network as an exported file (see ``bench.export.fileformat``)."""
    cfg = run.config
    graph = build_graph(run.model, cfg["model"])
    folded = [op["name"] + ": " + ", ".join(op.get("folded", [])) for op in graph.ops if op["op"] == "threshold"]
    manifest = {
        "model": cfg["model"], "estimator": cfg["estimator"] if cfg["w_bits"] == 1 else None,
        "activation_estimator": cfg.get("activation_estimator"), "bits": f"W{cfg['w_bits']}A{cfg['a_bits']}",
        "mode": run.mode, "key": run.key, "config": cfg, "graph": list(graph.ops),
        "input": {"shape": list(run.dataset.shape), "mean": list(run.dataset.mean), "std": list(run.dataset.std),
                  "pixels": "uint8 / 255, then (x - mean) / std per channel"},
        "num_classes": run.dataset.num_classes,
        "folded": {"into thresholds (layer: modules)": folded,
                   "kept": "float layers, BatchNorm after a float layer or before a float layer, pools over real "
                           "values, scales and alphas of binary layers whose output stays real"},
    }
    return fileformat.save(path, graph.tensors, manifest)


def load_exported(path: str | Path) -> tuple[BitNet, dict[str, Any]]:
    tensors, manifest = fileformat.load(path)
    return BitNet(manifest["graph"], tensors), manifest


def _near_threshold(model: nn.Module) -> tuple[list[Any], dict[str, torch.Tensor]]:
    """Hooks recording, per image, the smallest |value| each binary activation sees (a sign that float rounding
    could flip)."""
    from bench.estimator import estimator_quantizers

    seen: dict[str, torch.Tensor] = {}
    hooks = []
    quantizers = set(estimator_quantizers(model, "activation"))
    for name, q in model.named_modules():
        if q not in quantizers:
            continue

        def hook(mod, inputs, name=name):
            x = inputs[0].detach().float().abs().flatten(1)
            seen[name] = x.amin(1) / x.amax(1).clamp_min(1e-30)  # relative to the image's largest value
        hooks.append(q.register_forward_pre_hook(hook))
    return hooks, seen


@torch.no_grad()
def check_export(run: LoadedRun, net: BitNet | Any, limit: int | None = None) -> Check:
    """Predictions of the exported network (``net(x) -> logits``) against the simulated model's, image by image;
    on the first ``limit`` test images only where given."""
    hooks, seen = _near_threshold(run.model)
    n = agree = right_sim = right_exp = 0
    reasons: dict[str, int] = {}
    try:
        for xb, yb in run.test.batches():
            if limit is not None and n >= limit:
                break
            if limit is not None:
                xb, yb = xb[:limit - n], yb[:limit - n]
            sim = run.estimator.predict(run.model, xb) if run.estimator is not None else run.model(xb)
            sim = sim.float()
            exp = torch.as_tensor(net(xb)).float()
            ps, pe = sim.argmax(1), exp.argmax(1)
            same = ps == pe
            n, agree = n + len(yb), agree + int(same.sum())
            right_sim, right_exp = right_sim + int((ps == yb).sum()), right_exp + int((pe == yb).sum())
            for i in torch.nonzero(~same).flatten().tolist():
                r = _reason(sim[i], {k: float(v[i]) for k, v in seen.items()})
                reasons[r] = reasons.get(r, 0) + 1
    finally:
        for h in hooks:
            h.remove()
    return Check(n, agree, 100.0 * right_sim / max(n, 1), 100.0 * right_exp / max(n, 1), reasons)


def word_ops(net: BitNet, input_shape: list[int]) -> int:
    """XOR-popcount word operations of one image through the network's binary layers: what the bit-level
    reference costs, to bound how many test images a run's end checks with it."""
    x = torch.zeros(1, *input_shape)
    total = 0
    with torch.no_grad():
        for i, op in enumerate(net.ops):
            y = net.step(i, op, x)
            if op["op"] == "binary":
                words = net.words[i].shape[-1]
                total += int(y[0].numel()) * words  # each output value: one row of words
            x = y
    return total


def _reason(logits: torch.Tensor, closest: dict[str, float]) -> str:
    top = logits.topk(2).values
    if float(top[0] - top[1]) <= NEAR * max(float(top[0].abs()), 1.0):
        return "two logits within float rounding of each other (a tie the order of float sums decides)"
    near = [k for k, v in closest.items() if v <= NEAR]
    if near:
        return (f"an activation within float rounding of its sign threshold (at {near[0]}): a folded threshold "
                "exactly at an activation, decided by the order of float sums")
    return "not explained by float rounding (a bug: please report it)"
