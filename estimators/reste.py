from __future__ import annotations

import math

import torch
from torch import Tensor

from bench import Estimator, register_estimator
from bench.functional import sign
from bench.recipes import Rule


def reste_grad(x: Tensor, o: float, t: float, eps: float) -> Tensor:
    """(1/o)|x|^((1-o)/o) on eps < |x| <= t; eps^(1/o)/eps on |x| <= eps; 0 beyond t."""
    a = x.abs()
    power = (1.0 / o) * a.clamp(min=eps) ** ((1.0 - o) / o)
    g = torch.where(a <= eps, torch.full_like(a, eps ** (1.0 / o) / eps), power)
    return torch.where(a <= t, g, torch.zeros_like(a))


class _ReSteSign(torch.autograd.Function):
    r"""ReSTE's binarizer in one Function (Wu et al., ICCV 2023, eqs. 9-11; DravenALG/ReSTE ``binarized_modules.py``).

    Forward:   y = sign(x)
    Backward:  dL/dx = g r(x),  r(x) = (1/o) |x|^((1-o)/o)   for eps < |x| <= t
                                r(x) = eps^(1/o) / eps        for |x| <= eps  (chord slope of |x|^(1/o) on [0, eps])
                                r(x) = 0                      for |x| > t
    The same values as ``reste_grad`` (the power of the clamped |x| by the same operation), with the two
    piecewise cases written into that buffer in place instead of two ``where`` selects over fresh full tensors.
    """

    @staticmethod
    def forward(ctx, x: Tensor, o: float, t: float, eps: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.o, ctx.t, ctx.eps = o, t, eps
        return sign(x)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        o, t, eps = ctx.o, ctx.t, ctx.eps
        a = x.abs()
        r = a.clamp(min=eps).pow_((1.0 - o) / o).mul_(1.0 / o)
        r.masked_fill_(a <= eps, eps ** (1.0 / o) / eps)
        r.masked_fill_(a.le(t).logical_not_(), 0.0)  # not (|x| <= t): a NaN gets 0, as the where did
        return r.mul_(g), None, None, None


def o_schedule(fraction: float, o_end: float) -> float:
    """o(e) = 1 + (o_end - 1)(1 - cos(pi/2 * e/E))."""
    return 1.0 + (o_end - 1.0) * (1.0 - math.cos(math.pi / 2 * fraction))


@register_estimator("reste")
class ReSte(Estimator):
    r"""Rectified straight-through estimator (Wu, Zheng, Liu, Zheng, ICCV 2023, arXiv 2308.06689).

    Equivalent forward (the paper's view), identity at o = 1:

    .. math::

        \operatorname{ReSTE}_o(x) = \operatorname{sign}(x) |x|^{1/o}, \quad o \ge 1

    Forward (times :math:`s = \operatorname{mean}|W|` over the layer, not detached, when scaling is internal, as the
    official code):

    .. math::

        x_b = \operatorname{sign}(x)

    Backward (the chord slope near 0 avoids the pole; e.g. at o = 3: 4.64 near 0, 1.55 just above 0.1, 0.254 at
    |x| = 1.5):

    .. math::

        \frac{\partial L}{\partial x} = \frac{\partial L}{\partial x_b} g(x), \quad g(x) = \begin{cases}
        \frac{1}{o} |x|^{(1-o)/o} & \text{if } \epsilon < |x| \le t \\
        \epsilon^{1/o} / \epsilon & \text{if } |x| \le \epsilon \\
        0 & \text{if } |x| > t \end{cases}

    Schedule, per epoch, for weights and activations:

    .. math::

        o(e) = 1 + (o_{end} - 1) (1 - \cos(\frac{\pi}{2} \frac{e}{E}))

    Paper: https://arxiv.org/abs/2308.06689 (ICCV 2023, "Estimator Meets Equilibrium Perspective: A Rectified
    Straight Through Estimator for Binary Neural Networks Training").
    Code: https://github.com/DravenALG/ReSTE (``model/binary_module/binarized_modules.py``).

    Hyperparameters:
        o_end (float, default 3.0), t (float, default 1.5), eps (float, default 0.1).
    Diagnostics (the official `--cal_ind` indicators): ``fitting_error`` = ||ReSTE_o(w) - sign(w)||_2 at the
    current o (the official code evaluates it at o_end), ``grad_stability`` = Var(|dL/dw|) of the last step.
    """

    display_name = "ReSTE"

    native_scaling = "internal"
    native_activation = None  # the same estimator binarizes activations
    sample_wise = True  # activations: element by element, o from the progress only
    published = [
        Rule({}, {"amp": False, "channels_last": False, "schedule_unit": "epoch"},
             "DravenALG/ReSTE @0d3c36a: float32 (main.py:97-99 model.cuda(), :319 inputs.cuda(); no cast, no amp); "
             "warm-up and cosine per epoch (main.py:180-181 CosineAnnealingLR, :212-214 lr (e+1)/5 for e < 5, "
             ":234-235 stepped once per epoch)"),
        Rule({"dataset": "cifar*"},
             {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "lr_schedule": "cosine",
              "warmup_epochs": 5, "epochs": 1000, "batch_size": 256, "estimator_hparams": {"o_end": 3.0}},
             "DravenALG/ReSTE README.md:56-68 (--epochs 1000, --lr 0.1, -b 256, --o_end 3, --warm_up), "
             "utils/arguments.py:72 wd, :78 momentum; main.py SGD, cosine, 5-epoch warm-up",
             published_for=({"dataset": "cifar10", "a_bits": 1}, {"dataset": "cifar10", "model": "resnet20"})),
        Rule({"dataset": "cifar*", "model": "resnet18"}, {"epochs": 2000, "batch_size": 96},
             "DravenALG/ReSTE README.md:109 (ResNet-18: 2000 epochs, batch 96; commit a4435d1)",
             published_for=({"dataset": "cifar10", "a_bits": 1},)),
        Rule({"dataset": "imagenet"},
             {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "lr_schedule": "cosine",
              "warmup_epochs": 0, "epochs": 250, "batch_size": 750, "estimator_hparams": {"o_end": 3.0}},
             "DravenALG/ReSTE README.md:73-84 (--epochs 250, --lr 0.1, -b 750, --o_end 3, no --warm_up), "
             "utils/arguments.py:72 wd, :78 momentum; main.py SGD, cosine",
             published_for=({"dataset": "imagenet", "model": "resnet18"},
                            {"dataset": "imagenet", "model": "resnet34"})),
    ]

    def __init__(self, o_end: float = 3.0, t: float = 1.5, eps: float = 0.1):
        super().__init__()
        self.o_end, self.t, self.eps = o_end, t, eps

    @property
    def o(self) -> float:
        return o_schedule(self.progress.fraction, self.o_end)

    def quantize(self, x: Tensor, q) -> Tensor:
        xb = _ReSteSign.apply(x, self.o, self.t, self.eps)
        if q.internal_scale and q.kind == "weight":
            xb = xb * x.abs().mean()
        return xb

    def layer_diagnostics(self, w: Tensor, q) -> dict[str, float]:
        wd = w.detach().flatten().float()
        fit = sign(wd) * wd.abs() ** (1.0 / self.o) - sign(wd)
        out = {"fitting_error": float(fit.norm()), "o": self.o}
        if w.grad is not None:
            out["grad_stability"] = float(w.grad.detach().abs().float().var())
        return out
