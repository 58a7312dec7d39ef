"""timm's gradient check: one forward and backward of every registered model with every registered weight
estimator, in every W/A setting and weight scaling, reaches every trainable parameter with a finite gradient
that is not identically zero.

A parameter that gets no gradient trains on weight decay alone: a dead per-channel alpha, a VISPA factor Z cut
off by a ``.detach()``, a DSQ range no one differentiates. Nothing else in the suite notices, because such a
run still trains (its other parameters carry it). The one legitimate exception is the control estimator
(role "control", ``frozen``): its binary layers' latent weights get no gradient by design, and the test asserts
that they indeed get none.

Models are built as the trainer builds them (``bench.spec.resolve`` then ``build_model``), each on a batch of 4
random inputs of its dataset's shape; stages are entered as ``bench.train.train`` enters them (``begin_stage``
then ``set_progress``), BiPer's first (real sine weights) and last (the square wave). The loss is the training
step's own (``bench.train.training_step``: task loss plus the estimator's loss term).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from bench.data import get_dataset
from bench.estimator import Progress, Stage, get_estimator_class, list_estimators
from bench.layers import binary_layers
from bench.models import list_models
from bench.spec import resolve
from bench.train import build_model, training_step

#: the dataset each model is checked on (its natural input shape); a model not named here gets DEFAULT_DATASET
MODEL_DATASET = {"mlp": "digits", "convnet": "mnist", "resnet20": "cifar10", "resnet18": "cifar10",
                 "vgg_small": "cifar10", "vgg16": "cifar10", "resnet34": "imagenet"}
DEFAULT_DATASET = "cifar10"
#: small widths where the model takes width arguments (mlp: two hidden layers, so that one of them is binary)
SMALL_ARGS: dict[str, dict[str, Any]] = {"mlp": {"hidden": [16, 16]}, "convnet": {"widths": [8, 16, 16]}}
#: models cheap enough on one CPU core for every estimator and setting; the others are marked slow
FAST_MODELS = {"mlp", "convnet", "resnet20"}
BATCH = 4

#: (bits, recipe, scaling): the recipe's own scaling (None), each explicit scaling and the estimator's native one,
#: under the common recipe and under the estimator's published one (its native activation estimator, tau, ...)
SETTINGS = [("W1A1", "common", None), ("W1A1", "common", "none"), ("W1A1", "common", "mean"),
            ("W1A1", "common", "alpha"), ("W1A1", "common", "native"), ("W1A1", "published", None),
            ("W1A32", "common", None), ("W1A32", "common", "native"), ("W1A32", "published", None)]
#: the larger models (slow: seconds per case on one core) in fewer settings: the scalings are the layers' own code,
#: the same in every model, and the fast models check each of them
SLOW_SETTINGS = [("W1A1", "common", None), ("W1A1", "published", None), ("W1A32", "common", None)]
BITS = {"W1A1": (1, 1), "W1A32": (1, 32), "FP32": (32, 32)}


@dataclass(frozen=True)
class Case:
    model: str
    estimator: str
    bits: str
    recipe: str
    scaling: str | None
    stage: int  # index into the estimator's stages

    @property
    def config(self) -> dict[str, Any]:
        w, a = BITS[self.bits]
        cfg = {"estimator": self.estimator, "model": self.model, "dataset": MODEL_DATASET.get(self.model,
                                                                                                DEFAULT_DATASET),
               "model_args": SMALL_ARGS.get(self.model, {}), "w_bits": w, "a_bits": a, "recipe": self.recipe,
               "threads": 1}
        if self.scaling is not None:
            cfg["scaling"] = self.scaling
        return cfg

    @property
    def id(self) -> str:
        return f"{self.model}-{self.estimator}-{self.bits}-{self.recipe}-{self.scaling or 'recipe'}-stage{self.stage}"


def weight_estimators() -> list[str]:
    return [n for n in list_estimators() if "weight" in get_estimator_class(n).kinds and not n.startswith("test_")]


def _signature(case: Case) -> tuple:
    """What the built model depends on: two settings that resolve alike are one case."""
    cfg = resolve(case.config).config
    return (case.model, case.stage, cfg.estimator, cfg.w_bits, cfg.a_bits, cfg.scaling, cfg.activation_estimator,
            repr(sorted(cfg.activation_hparams.items())), repr(sorted(cfg.estimator_hparams.items())),
            repr(sorted(cfg.model_args.items())))


def cases() -> list[Case]:
    out: dict[tuple, Case] = {}
    for model in list_models():
        # FP32: no estimator builds anything (w_bits=32, a_bits=32), so one case per model
        fp = Case(model, "ste", "FP32", "common", None, 0)
        out[_signature(fp)] = fp
        for est in weight_estimators():
            n_stages = len(get_estimator_class(est)().stages())
            for stage in sorted({0, n_stages - 1}):
                for bits, recipe, scaling in SETTINGS if model in FAST_MODELS else SLOW_SETTINGS:
                    case = Case(model, est, bits, recipe, scaling, stage)
                    out.setdefault(_signature(case), case)
    return list(out.values())


CASES = cases()


def _param(case: Case):
    marks = [] if case.model in FAST_MODELS else [pytest.mark.slow]
    return pytest.param(case, id=case.id, marks=marks)


class _NoStep:
    """training_step's optimizer: gradients are what this test reads, so nothing may move the parameters."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        pass


def forward_backward(case: Case) -> tuple[torch.nn.Module, Any, torch.Tensor]:
    """The model after one training step's forward and backward (parameters unchanged), its weight estimator,
    and the loss."""
    from bench.estimator import estimator_quantizers
    from bench.train import quantized_weights

    torch.manual_seed(0)
    spec = resolve(case.config)
    cfg = spec.config
    ds = get_dataset(cfg.dataset)
    model, est, act = build_model(cfg, ds)
    model.train()
    stage = spec.stages[case.stage]
    for e in dict.fromkeys(e for e in (est, act) if e is not None):  # as bench.train.train enters a stage
        e.begin_stage(stage.index, Stage(stage.name, 1.0, stage.estimator if e is est else {}))
        e.set_progress(Progress(stage.index, stage.name, 0, stage.epochs))
    x = torch.randn(BATCH, *ds.shape)
    y = torch.randint(0, ds.num_classes, (BATCH,))
    constrained = [(q, w) for q, w in quantized_weights(model) if q.estimator.has_constraint]
    loss, _ = training_step(model, est, estimator_quantizers(model, "weight"), constrained, _NoStep(model), None,
                            x, y)
    return model, est, loss


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_every_parameter_gets_a_gradient(case):
    model, est, loss = forward_backward(case)
    assert torch.isfinite(loss)
    layers = binary_layers(model)
    if case.bits == "FP32":
        assert not layers
    else:
        assert layers, "a binary setting built no binary layer: the check below would see none of them"
    control = est is not None and est.role == "control"
    latent = {id(layer.weight) for _, layer in layers}
    problems = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if control and id(p) in latent:
            if p.grad is not None:
                problems.append(f"{name}: the control's latent weight got a gradient")
        elif p.grad is None:
            problems.append(f"{name}: no gradient")
        elif not torch.isfinite(p.grad).all():
            problems.append(f"{name}: non-finite gradient")
        elif not p.grad.any():
            problems.append(f"{name}: gradient identically zero")
    assert not problems, "\n".join(problems)


def test_the_grid_covers_every_registered_model_and_weight_estimator():
    seen = {(c.model, c.estimator) for c in CASES if c.bits != "FP32"}
    assert seen == {(m, e) for m in list_models() for e in weight_estimators()}
    # each per-layer parameter the estimators create shows up in some fast case: VISPA's Z, DSQ's alpha and u
    assert {c.estimator for c in CASES if c.model in FAST_MODELS} == set(weight_estimators())
    for est in weight_estimators():  # every stage an estimator declares is entered once (BiPer: real, binary)
        n = len(get_estimator_class(est)().stages())
        assert {c.stage for c in CASES if c.estimator == est} == set(range(n)) & {0, n - 1}
