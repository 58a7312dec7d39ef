from __future__ import annotations

import math

import torch
from torch import Tensor

from bench import Estimator, register_estimator
from bench.functional import channel_dims, sign, standardize, standardize_backward
from bench.recipes import Rule

C = 2 * math.sqrt(2)


class _ReCUSign(torch.autograd.Function):
    r"""ReCU's weight binarizer in one Function (Xu et al., ICCV 2021, eqs. 6-8; z-hXu/ReCU ``binarized_modules.py``).

    Forward, per output channel c over the n = |dims| elements of its filter (``std``; else w1 = w):
        mu_c, var_c = mean_c(w), unbiased Var_c(w);   sigma_c = sqrt(var_c + 1e-5)
        w1 = C (w - mu_c) / sigma_c,                     C = 2 sqrt 2 (Laplace b = 2)
        Q  = -mean(|w1|) ln(2 - 2 tau)                  (over the whole tensor, detached)
        y  = sign(clamp(w1, -Q, Q)) = sign(w1)          (Q > 0: the clamp never changes a sign)
    Backward (identity STE through the sign, the clamp's gradient, then the standardisation):
        g1 = g 1{|w1| <= Q}
        dL/dw = (C / sigma_c) (g1 - mean_c g1) - w1 sum_c(g1 w1) / ((n - 1) sigma_c C)
    The statistics (mu, sigma, w1, the mask) are computed once, in the forward, from the same floating-point
    operations as the unfused code (so the mask and the output are bit-identical); the backward reads only the
    saved w1, mask and sigma, and its arithmetic is the unfused one too (bit-identical gradients, so a run's whole
    trajectory is unchanged), with its temporaries reused in place.
    """

    @staticmethod
    def forward(ctx, w: Tensor, tau: float, std: bool) -> Tensor:  # type: ignore[override]
        if std:
            dims = channel_dims(w)
            n = math.prod(w.shape[d] for d in dims)
            var, mean = torch.var_mean(w, dim=dims, keepdim=True)
            sigma = torch.sqrt(var + 1e-5)
            # C (w - mean) / sigma, evaluated in that order (bit-identical to ``standardize``), in place: one buffer
            w1 = (w - mean).mul_(C).div_(sigma)
        else:
            w1, sigma, dims, n = w, w.new_empty(0), (), 1
        a = w1.abs()
        q = a.mean().mul_(-math.log(2 - 2 * tau))  # -mean|w1| ln(2 - 2 tau): the unfused expression's rounding
        mask = a.le_(q)  # 1{|w1| <= Q}, reusing |w1|'s buffer (a float 0/1: the backward multiplies by it)
        ctx.save_for_backward(w1, mask, sigma)
        ctx.dims, ctx.n, ctx.std = dims, n, std
        return sign(w1)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        w1, mask, sigma = ctx.saved_tensors
        g1 = g * mask.to(g.dtype)
        if not ctx.std:
            return g1, None, None
        return standardize_backward(g1, w1, sigma, C, ctx.dims, ctx.n), None, None


def tau_schedule(fraction: float, tau_min: float, tau_max: float) -> float:
    """tau(e) = A e^(e/E) + (tau_min - A), A = (tau_max - tau_min)/(e - 1): tau_min at 0, tau_max at E."""
    a = (tau_max - tau_min) / (math.e - 1.0)
    return a * math.exp(fraction) + (tau_min - a)


@register_estimator("recu")
class ReCU(Estimator):
    r"""Rectified clamp unit (Xu et al., ICCV 2021; official code z-hXu/ReCU).

    Standardise per output channel c (Laplace b = 2), then clamp at the detached bound :math:`Q_\tau`:

    .. math::

        w_1 = \frac{2 \sqrt{2} (w - \operatorname{mean}_c w)}{\sqrt{\operatorname{Var}_c(w) + 10^{-5}}}, \quad
        w_2 = \operatorname{clamp}(w_1, -Q_\tau, Q_\tau), \quad Q_\tau = -\operatorname{mean}|w_1| \ln(2 - 2 \tau)

    Forward:

    .. math::

        w_b = \operatorname{sign}(w_2)

    Backward: identity straight-through through the sign, autograd through the clamp and the standardisation:

    .. math::

        \frac{\partial w_b}{\partial w_1} = \mathbb{1}\{|w_1| \le Q_\tau\}

    Schedule, 0.85 -> 0.99:

    .. math::

        \tau(e) = A e^{e/E} + (\tau_{min} - A), \quad A = \frac{\tau_{max} - \tau_{min}}{e - 1}

    Activations: ApproxSign with std normalisation; learnable per-channel alpha scale.

    Paper: https://openaccess.thecvf.com/content/ICCV2021/html/Xu_ReCU_Reviving_the_Dead_Weights_in_Binary_Neural_Networks_ICCV_2021_paper.html
    (arXiv: https://arxiv.org/abs/2103.12369).
    Code: https://github.com/z-hXu/ReCU (``cifar/modules/binarized_modules.py``).

    At the bound. binbench passes the gradient at exactly |w1| = Q_tau (the mask is ``|w1| <= Q``), as
    ``torch.clamp`` did when the official code ran (z-hXu/ReCU cifar/modules/binarized_modules.py:23-24 @9a73bed:
    ``Q_tau = (...).item()``, ``torch.clamp(w1, -Q_tau, Q_tau)``; PyTorch 1.x passed the gradient at the bounds).
    Current PyTorch's clamp passes none there for a float bound (0.5 for a tensor bound); the set |w1| = Q_tau
    holds at most the few weights that define the bound's rounding, so the choice follows the code's era.

    Hyperparameters:
        tau_min (float, default 0.85), tau_max (float, default 0.99),
        standardize (bool, default True): False applies the clamp to w directly (used by probes/tests).
    """

    display_name = "ReCU"

    kinds = ("weight",)
    native_scaling = "alpha"
    native_activation = "approx_sign"
    native_activation_hparams = {"std_normalize": True}
    published = [
        Rule({}, {"amp": False, "channels_last": False, "schedule_unit": "epoch"},
             "z-hXu/ReCU @9a73bed: float32 (cifar/utils/options.py:59-62 --type torch.cuda.FloatTensor, cifar/main.py"
             ":107 model.type, no amp anywhere); warm-up and cosine per epoch (cifar/main.py:147 CosineAnnealingLR, "
             ":179-181 lr (e+1)/5 for e < 5, :196-197 stepped once per epoch; imagenet/main.py:201,233,250-251)"),
        Rule({"dataset": "cifar*"},
             {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "lr_schedule": "cosine",
              "warmup_epochs": 5, "epochs": 600, "batch_size": 256,
              "estimator_hparams": {"tau_min": 0.85, "tau_max": 0.99}},
             "z-hXu/ReCU cifar/run.sh:7-15 (600 ep, lr 0.1, b 256, cos, --warm_up, wd 5e-4, tau 0.85-0.99), "
             "cifar/utils/options.py:82 momentum, cifar/main.py:179 5-epoch warm-up",
             published_for=({"dataset": "cifar10", "a_bits": 1},)),
        Rule({"dataset": "imagenet"},
             {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "lr_schedule": "cosine",
              "warmup_epochs": 5, "epochs": 200, "batch_size": 512,
              "estimator_hparams": {"tau_min": 0.85, "tau_max": 0.99}},
             "z-hXu/ReCU imagenet/run.sh:7-15 (200 ep, lr 0.1, b 512, cos, --warm_up, wd 1e-4, tau 0.85-0.99), "
             "imagenet/utils/options.py:82 momentum",
             published_for=({"dataset": "imagenet", "a_bits": 1},)),
    ]

    def __init__(self, tau_min: float = 0.85, tau_max: float = 0.99, standardize: bool = True):
        super().__init__()
        self.tau_min, self.tau_max, self.standardize = tau_min, tau_max, standardize

    @property
    def tau(self) -> float:
        return tau_schedule(self.progress.fraction, self.tau_min, self.tau_max)

    def latent(self, w: Tensor, q=None) -> Tensor:
        return standardize(w, C, 1e-5)[0] if self.standardize else w

    def q_tau(self, w1: Tensor) -> Tensor:
        return (-w1.abs().mean() * math.log(2 - 2 * self.tau)).detach()

    def quantize(self, x: Tensor, q) -> Tensor:
        return _ReCUSign.apply(x, self.tau, self.standardize)

    def saturated(self, w: Tensor, q) -> Tensor:
        w1 = self.latent(w)
        return w1.abs() > self.q_tau(w1)
