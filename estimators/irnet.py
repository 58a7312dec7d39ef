from __future__ import annotations

import math

import torch
from torch import Tensor

from bench import Estimator, register_estimator
from bench.functional import channel_dims, channel_view, sign, standardize, standardize_backward
from bench.recipes import Rule


class _IrNetSign(torch.autograd.Function):
    r"""IR-Net's binarizer in one Function (Qin et al., CVPR 2020, eqs. 7, 10-12; htqin/IR-Net ``binaryfunction.py``).

    Forward, per output channel c over the n elements of its filter:
        w_hat = (w - mean_c w) / std_c(w)                          (Libra-PB, unbiased std; ``std``, else w_hat = w)
        s_c   = 2^round(log2(mean_c |w_hat|))                      (detached; ``scale``, else s = 1)
        y     = s_c sign(w_hat)
    Backward (EDE, then the standardisation):
        g_hat = g s_c k t (1 - tanh^2(t w_hat))
        dL/dw = (g_hat - mean_c g_hat) / std_c - w_hat sum_c(g_hat w_hat) / ((n - 1) std_c)
    Activations use it with std = scale = False (EDE alone). w_hat and s come from the same floating-point operations
    as the unfused code (bit-identical forward), and so does the backward (bit-identical gradients), with the
    surrogate computed into one buffer in place.
    """

    @staticmethod
    def forward(ctx, w: Tensor, k: float, t: float, std: bool, scale: bool) -> Tensor:  # type: ignore[override]
        if std:
            dims = channel_dims(w)
            n = math.prod(w.shape[d] for d in dims)
            var, mean = torch.var_mean(w, dim=dims, keepdim=True)
            sigma = torch.sqrt(var)
            w_hat = (w - mean).div_(sigma)  # 1.0 * (w - mean) / sigma as ``standardize``, in one buffer
        else:
            w_hat, sigma, dims, n = w, w.new_empty(0), (), 1
        s = None
        if scale:
            d = channel_dims(w_hat)
            s = channel_view(torch.pow(2.0, torch.round(torch.log2(w_hat.abs().mean(dim=d)))), w_hat)
        ctx.save_for_backward(w_hat, sigma, s if s is not None else w.new_empty(0))
        ctx.k, ctx.t, ctx.std, ctx.dims, ctx.n, ctx.scaled = k, t, std, dims, n, s is not None
        out = sign(w_hat)
        return out.mul_(s) if s is not None else out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        w_hat, sigma, s = ctx.saved_tensors
        # k t (1 - tanh^2(t w_hat)) with the unfused expression's rounding, in one buffer
        th = torch.tanh(w_hat * ctx.t)
        gh = th.mul_(th).neg_().add_(1.0).mul_(ctx.k * ctx.t).mul_(g)
        if ctx.scaled:
            gh = gh.mul_(s)
        if ctx.std:
            gh = standardize_backward(gh, w_hat, sigma, 1.0, ctx.dims, ctx.n)
        return gh, None, None, None, None


def ede_grad(x: Tensor, k: float, t: float) -> Tensor:
    """k t (1 - tanh^2(t x))."""
    return k * t * (1.0 - torch.tanh(t * x) ** 2)


def ede_schedule(fraction: float, t_min: float, t_max: float) -> tuple[float, float]:
    """t = 10^(log10 T_min + (log10 T_max - log10 T_min) e/E),  k = max(1/t, 1)."""
    t = 10 ** (math.log10(t_min) + (math.log10(t_max) - math.log10(t_min)) * fraction)
    return max(1.0 / t, 1.0), t


@register_estimator("irnet")
class IrNetEde(Estimator):
    r"""IR-Net: Libra-PB and the error decay estimator (Qin et al., CVPR 2020; official code htqin/IR-Net).

    Libra-PB, per output channel c (with standardize=True):

    .. math::

        \hat{w} = \frac{w - \operatorname{mean}_c w}{\operatorname{std}_c(w)}

    Forward, with a power-of-two scale (detached) when scaling is internal:

    .. math::

        w_b = \operatorname{sign}(\hat{w}) \cdot 2^{\operatorname{round}(\log_2 \operatorname{mean}_c |\hat{w}|)}

    Backward, EDE, for weights and activations:

    .. math::

        \frac{\partial L}{\partial x} = \frac{\partial L}{\partial x_b} \cdot k t (1 - \tanh^2(t x))

    Schedule (at :math:`T_{min} = 10^{-3}` it starts as an identity straight-through: k t = 1):

    .. math::

        t = 10^{\log_{10} T_{min} + (\log_{10} T_{max} - \log_{10} T_{min}) e/E}, \quad k = \max(1/t, 1)

    Paper: https://openaccess.thecvf.com/content_CVPR_2020/html/Qin_Forward_and_Backward_Information_Retention_for_Accurate_Binary_Neural_Networks_CVPR_2020_paper.html
    (arXiv: https://arxiv.org/abs/1909.10788).
    Code: https://github.com/htqin/IR-Net (``CIFAR-10/ResNet20/1w1a/modules/ir_1w1a.py``).

    Hyperparameters:
        t_min (float, default 1e-3): the ResNet-20 trainer's value; the VGG-small script uses 0.1.
        t_max (float, default 10.0).
        standardize (bool, default True).
    """

    display_name = "IR-Net"

    native_scaling = "internal"
    native_activation = None  # EDE for activations too
    sample_wise = True  # activations: EDE's sign element by element, k and t from the progress only
    published = [
        Rule({}, {"amp": False, "channels_last": False, "schedule_unit": "epoch"},
             "htqin/IR-Net @f63a590: float32 (--half is opt-in and off: CIFAR-10/ResNet20/1w1a/trainer.py:49-50); "
             "cosine per epoch, no warm-up (trainer.py:119 CosineAnnealingLR(T_max=epochs), :165 stepped once per "
             "epoch; VGG-Small/main.py:121,157)"),
        # CIFAR: the ResNet-20 trainers (no warm-up in any of them); ResNet-18 has a model file but no trainer
        Rule({"dataset": "cifar*"},
             {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "epochs": 400, "batch_size": 128,
              "lr_schedule": "cosine", "warmup_epochs": 0, "estimator_hparams": {"t_min": 1e-3, "t_max": 10.0}},
             "htqin/IR-Net CIFAR-10/ResNet20/1w1a/trainer.py:29-39 (epochs, batch, lr, momentum, wd), :115 SGD, "
             ":119 cosine, no warm-up, :130 T_min, T_max = 1e-3, 1e1",
             published_for=({"dataset": "cifar10", "model": "resnet20"},)),
        Rule({"dataset": "cifar*", "a_bits": 32}, {"estimator_hparams": {"t_min": 0.1}},
             "htqin/IR-Net CIFAR-10/ResNet20/1w32a/trainer.py:129 (T_min, T_max = 1e-1, 1e1; :29-39, :114, :118 "
             "as the 1w1a trainer)",
             published_for=({"dataset": "cifar10", "model": "resnet20"},)),
        Rule({"dataset": "cifar*", "model": "vgg_small"},
             {"optimizer": "sgd", "lr": 0.007, "momentum": 0.9, "weight_decay": 1e-4, "epochs": 300, "batch_size": 128,
              "lr_schedule": "cosine", "warmup_epochs": 0, "estimator_hparams": {"t_min": 0.1, "t_max": 10.0}},
             "htqin/IR-Net CIFAR-10/VGG-Small/main.py:30-40 (epochs 300, batch 128, lr 0.007, momentum, wd), "
             ":117 SGD, :121 cosine, no warm-up, :123 T_min, T_max = 1e-1, 1e1",
             published_for=({"dataset": "cifar10", "a_bits": 1},)),
        # ImageNet: SenseTime-style config, batch 64 per GPU on 32 GPUs (README); the lr ramps from base_lr 0.2 to
        # warmup_lr 0.8 over 2500 iterations, then STEP x0.1 at 30/60/90% of max_iter 62500 (= 100 epochs)
        Rule({"dataset": "imagenet"},
             {"optimizer": "sgd", "momentum": 0.9, "lr": 0.8, "warmup_epochs": 4, "lr_schedule": "step",
              "weight_decay": 1e-5, "batch_size": 2048, "epochs": 100},
             "htqin/IR-Net ImageNet/ResNet18/1w1a/config.yaml:14 batch 64 x 32 GPUs (README.md), :17-25 STEP, "
             "base_lr 0.2 -> warmup_lr 0.8 over 2500 it, max_iter 62500, :28-32 SGD wd 1e-5 nesterov [binbench: "
             "warm-up from 0, step at 50/75%, no nesterov]",
             published_for=({"dataset": "imagenet", "model": "resnet18"},)),
        Rule({"dataset": "imagenet", "a_bits": 32}, {"weight_decay": 1e-4},
             "htqin/IR-Net ImageNet/ResNet18/1w32a/config.yaml:31 (optimizer weight_decay 1e-4; :14-25 as 1w1a)",
             published_for=({"dataset": "imagenet", "model": "resnet18"},)),
    ]

    def __init__(self, t_min: float = 1e-3, t_max: float = 10.0, standardize: bool = True):
        super().__init__()
        self.t_min, self.t_max, self.standardize = t_min, t_max, standardize

    @property
    def kt(self) -> tuple[float, float]:
        return ede_schedule(self.progress.fraction, self.t_min, self.t_max)

    def latent(self, w: Tensor, q=None) -> Tensor:
        if not self.standardize or (q is not None and q.kind == "activation"):
            return w
        return standardize(w, 1.0, 0.0)[0]

    def quantize(self, x: Tensor, q) -> Tensor:
        k, t = self.kt
        weight = q.kind == "weight"
        return _IrNetSign.apply(x, k, t, self.standardize and weight, q.internal_scale and weight)
