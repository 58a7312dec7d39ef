from __future__ import annotations

import torch
from torch import Tensor, nn

from bench import Estimator, register_estimator
from bench.errors import ConfigError
from bench.functional import sign, sign_ste
from bench.recipes import Rule

NORMALIZE = ("forward", "persistent")
M_INIT = ("model", "xavier")


class _VispaSign(torch.autograd.Function):
    r"""VISPA's sampled binarizer in one Function (Orecchia et al., NeurIPS 2024, Theorem 1 and Algorithm 1; the
    official snownus/bnn_vi ``BinarizeConv2dSDP``, which normalises a copy in every forward).

    Forward:   A = M^2 + sum_k Z_k^2 / S,  (m_n, z_n) = (M, Z) / sqrt(A)   (``normalise``; else A = 1)
               y = sign(m_n + eps . z_n / sqrt(S)) = sign((M + eps . Z / sqrt(S)) / sqrt(A))
                 = sign(M + eps . Z / sqrt(S))                              (sqrt(A) > 0 scales every weight by a
                                                                              positive number: no sign changes)
    Backward:  dL/dM = g,  dL/dZ_k = eps_k g            (identity STE, no chain rule through the normalisation)

    So the normalisation, which the official code computes on every forward, changes neither output nor gradient and
    costs nothing here: the forward is one sampling pass (eps . Z, then / sqrt(S) and + M in place) and the sign;
    only eps is kept for the backward. (The one case where multiplying by rsqrt(A) first could differ: a negative w
    with |w| / sqrt(A) below the smallest subnormal (~1e-45) underflows to -0.0 and reads +1; that needs
    |w| < 1e-45 sqrt(A), which finite weights at any training scale never reach. ``normalise`` stays in the
    signature for the callers and is unused.)
    """

    @staticmethod
    def forward(ctx, m: Tensor, z: Tensor, eps: Tensor, scale: float, normalise: bool) -> Tensor:  # type: ignore[override]
        w = torch.tensordot(eps, z, dims=1)  # eps . z, shape of m
        w = w.div_(scale**0.5).add_(m)  # m + (eps . z) / sqrt(S), the unfused rounding, in one buffer
        ctx.save_for_backward(eps)
        return sign(w)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (eps,) = ctx.saved_tensors
        grad_z = eps.view(-1, *([1] * g.dim())) * g.unsqueeze(0) if ctx.needs_input_grad[1] else None
        return g, grad_z, None, None, None


@register_estimator("vispa")
class Vispa(Estimator):
    r"""Gaussian variational inference with a low-rank SDP constraint, "VISPA" (Orecchia et al., NeurIPS 2024).

    Official code: snownus/bnn_vi, `models/sdp_wo_entropy.py`, class BinarizeConv2dSDP (@835a7a3: M and Z
    initialised by ``xavier_normal_`` at lines 58-59; the forward normalises a copy at lines 68-74).

    Per binary layer: mean M (the latent weight), low-rank factor Z (K, *M.shape), variance scale S. Unit diagonal
    (SDP, Burer-Monteiro rank K), and the sample (one draw per layer per forward, shared by all weights and images;
    the code's :math:`r = \epsilon / \sqrt{S} \sim N(0, I_K / S)`):

    .. math::

        A_i = m_i^2 + \frac{\|z_i\|^2}{S}, \quad (m_n, z_n) = \frac{(M, Z)}{\sqrt{A}}, \quad
        \epsilon \sim N(0, I_K), \quad w = m_n + \frac{\epsilon^\top z_n}{\sqrt{S}}

    Forward (identity straight-through, no clipping):

    .. math::

        w_b = \operatorname{sign}(w)

    Backward (Theorem 1 in the coordinates :math:`Z_{paper} = Z / \sqrt{S}`: the gradient with respect to Z of the
    expected loss is :math:`E[g \epsilon^\top]`; no chain rule through the normalisation):

    .. math::

        \frac{\partial L}{\partial M} = \frac{\partial L}{\partial w_b}, \quad
        \frac{\partial L}{\partial Z} = \epsilon \frac{\partial L}{\partial w_b}
        = \sqrt{S} r \frac{\partial L}{\partial w_b}

    Evaluation modes: ``ensemble`` (average the logits of L independently sampled networks; L = 40 as
               published; the headline), ``sample`` (one sampled network), ``mean`` (sign(M)).
    Scaling:   learnable per-channel alpha ~ U(0, 1).  Activations: ApproxSign (W1A1), real (W1A32).

    Paper: https://openreview.net/forum?id=cIXETwTkhK (NeurIPS 2024, "Training Binary Neural Networks via Gaussian
    Variational Inference and Low-Rank Semidefinite Programming").
    Code: https://github.com/snownus/bnn_vi (``models/sdp_wo_entropy.py``).

    Code != paper on the normalisation. The official code normalises a *copy* in every forward (training and
    evaluation): it assigns ``.data`` of views of M and Z, which never reaches the parameters, so SGD and weight
    decay update the raw M and Z with the gradient taken at the normalised copies, and M, Z keep their init scale
    (signs keep flipping). The paper's Algorithm 1 (step 5) instead renormalises M and Z persistently after every
    step, which pins |m_i| near 1 when ||z_i||^2 / S << m_i^2, and the signs then barely move.

    Hyperparameters:
        rank (int, default 4): K. ``rank=0`` is the official ablation without Z (`models/sdp_wo_z.py`):
            w = M, sign, identity STE, no normalisation, no sampling.
        scale (float, default 100.0): S (= s^2 with the paper's init scaling s = 10).
        samples (int, default 40): L for the ensemble evaluation.
        normalize (str, default "forward"): ``forward`` is the official code (normalise a copy in every forward,
            nothing written back); ``persistent`` is the paper's Algorithm 1 step 5 (project M and Z in place
            after every optimizer step and at initialisation).
        m_init (str, default "model"): init of M: the model's own init of the layer's weight, or ``xavier``
            (xavier_normal_, as the official code initialises M and Z).
        clamp (bool, default False): with ``rank=0``, clip |m_i| <= 1 after every step (the diagonal/LP special
            case the paper describes; the official ablation has no clip).
    """

    display_name = "VISPA"

    kinds = ("weight",)
    native_scaling = "alpha"
    native_activation = "approx_sign"
    eval_modes = ("ensemble", "sample", "mean")
    export_mode = "mean"  # the one deployable binary network: sign(M); the ensemble is L networks
    stochastic = True
    step_cost_target = 1.3  # K noise values per layer and the normalisation of M and Z in every step
    published = [
        Rule({}, {"amp": False, "channels_last": False, "schedule_unit": "iteration"},
             "snownus/bnn_vi @835a7a3: float32 (main_sdp_cifar.py:63 --type torch.cuda.FloatTensor, :205 model.type; "
             "main_sdp_imagenet.py:106 --fp16-mode off, :109 --channels-last off); warm-up and cosine per iteration "
             "(main_sdp_cifar.py:338-340 adjust_learning_rate_cos every batch, :429-439)"),
        Rule({}, {"optimizer": "sgd", "momentum": 0.9, "lr_schedule": "cosine", "warmup_epochs": 5,
                  "estimator_hparams": {"scale": 100.0, "samples": 40, "normalize": "forward", "m_init": "xavier"}},
             "snownus/bnn_vi main_sdp_cifar.py, main_sdp_imagenet.py (SGD momentum 0.9; cos, 5 warm-up epochs); "
             "benchmark/*.sh S=100 L=40; models/sdp_wo_entropy.py:58-59 xavier_normal_(M), (Z) (@835a7a3), "
             ":68-74 the forward's normalised copy (.data of views of M and Z)",
             published_for=({"dataset": "cifar10", "model": "resnet18"}, {"dataset": "cifar10", "model": "vgg_small",
                                                                          "a_bits": 1},
                            {"dataset": "cifar10*", "model": "vgg16", "a_bits": 32},
                            {"dataset": "cifar100", "model": "resnet18", "a_bits": 32},
                            {"dataset": "tiny-imagenet", "model": "resnet18", "a_bits": 32},
                            {"dataset": "imagenet", "model": "resnet18"})),
        Rule({}, {"lr": 0.5, "weight_decay": 1e-5, "estimator_hparams": {"rank": 4}},
             "snownus/bnn_vi benchmark/Benchmark_cifar10_resnet18_1w1a.sh:4,7-8 and "
             "benchmark/Benchmark_cifar10_vggsmall_1w1a.sh:6-8 (K=4, lr=0.5, wd=1e-5)",
             published_for=({"dataset": "cifar10", "model": "resnet18", "a_bits": 1},
                            {"dataset": "cifar10", "model": "vgg_small", "a_bits": 1})),
        Rule({"dataset": "cifar*"}, {"epochs": 600, "batch_size": 256},
             "snownus/bnn_vi benchmark/Benchmark_cifar10_resnet18_1w1a.sh:9,27 and "
             "benchmark/Benchmark_cifar10_vggsmall_1w1a.sh:9,26 (600 epochs, -b 256)",
             published_for=({"dataset": "cifar10", "model": "resnet18", "a_bits": 1},
                            {"dataset": "cifar10", "model": "vgg_small", "a_bits": 1})),
        Rule({"a_bits": 32}, {"lr": 0.1, "weight_decay": 5e-4, "estimator_hparams": {"rank": 8}},
             "snownus/bnn_vi benchmark/Benchmark_cifar10_resnet18_1w32a.sh:4,7-8, Benchmark_cifar10_vgg16_1w32a.sh"
             ":7,10-11 (@835a7a3), Benchmark_tiny_imagenet_resnet18_1w32a.sh:4,7-8 (K=8, lr=0.1, wd=5e-4)",
             published_for=({"dataset": "cifar10*", "model": "resnet18"}, {"dataset": "cifar10*", "model": "vgg16"},
                            {"dataset": "tiny-imagenet", "model": "resnet18"})),
        Rule({"dataset": "cifar*", "a_bits": 32}, {"epochs": 500, "batch_size": 256},
             "snownus/bnn_vi benchmark/Benchmark_cifar10_resnet18_1w32a.sh:9,28, Benchmark_cifar10_vgg16_1w32a.sh:12; "
             "README.md CIFAR-100 log name ..._K=8_S=100_L=40_wd=5e-4_lr=0.1_cos_epochs=500",
             published_for=({"dataset": "cifar10*", "model": "resnet18"}, {"dataset": "cifar10*", "model": "vgg16"})),
        Rule({"dataset": "tiny-imagenet"}, {"epochs": 500, "batch_size": 256},
             "snownus/bnn_vi benchmark/Benchmark_tiny_imagenet_resnet18_1w32a.sh:25 (--input_size 64 --epochs 500 "
             "-b 256)",
             published_for=({"dataset": "tiny-imagenet", "model": "resnet18", "a_bits": 32},)),
        Rule({"model": "vgg_small"}, {"model_args": {"act": "prelu"}},
             "snownus/bnn_vi models/sdp_vgg_small.py:19,24,28,31,34,37 (@835a7a3): nn.PReLU(C) after every BN "
             "(since 8e37a38, 2024-05-11; the first version 2dcb8e5 had one shared nn.Hardtanh: "
             "--set model.act=hardtanh for it)",
             published_for=({"dataset": "cifar10", "a_bits": 1},)),
        # ImageNet: -b is per process (4 under torchrun) and main_sdp_imagenet.py scales lr by the global batch/256
        Rule({"dataset": "imagenet"},
             {"epochs": 200, "batch_size": 1024, "lr": 2.0, "weight_decay": 1e-5, "estimator_hparams": {"rank": 2}},
             "snownus/bnn_vi benchmark/Benchmark_imagenet_birealnet_1w1a.sh:4,7-8,11,14,16 (K=2, wd 1e-5, lr 0.5, 200 "
             "ep, -b 256 x 4 processes); main_sdp_imagenet.py:80 -b per process, :275 lr x global batch/256 = 2.0",
             published_for=({"dataset": "imagenet", "model": "resnet18", "a_bits": 1},)),
        Rule({"dataset": "imagenet", "a_bits": 32}, {"lr": 0.4, "weight_decay": 5e-5, "estimator_hparams": {"rank": 4}},
             "snownus/bnn_vi benchmark/Benchmark_imagenet_resnet18_1w32a.sh:4,7-8,11,14,16 (K=4, wd 5e-5, lr 0.1, 200 "
             "ep, -b 256 x 4 processes); main_sdp_imagenet.py:80, :275 lr x global batch/256 = 0.4",
             published_for=({"dataset": "imagenet", "model": "resnet18", "a_bits": 32},)),
    ]

    def __init__(self, rank: int = 4, scale: float = 100.0, samples: int = 40, normalize: str = "forward",
                 m_init: str = "model", clamp: bool = False):
        super().__init__()
        if rank < 0 or samples < 1 or scale <= 0:
            raise ConfigError(f"vispa needs rank >= 0, samples >= 1 and scale > 0 (got {rank}, {samples}, {scale})")
        if normalize not in NORMALIZE or m_init not in M_INIT:
            raise ConfigError(f"vispa: normalize must be one of {', '.join(NORMALIZE)} and m_init one of "
                              f"{', '.join(M_INIT)} (got {normalize!r}, {m_init!r})")
        if clamp and rank > 0:
            raise ConfigError("vispa: clamp applies to rank=0 only (set rank=0, or drop clamp)")
        self.rank, self.scale, self.samples = rank, scale, samples
        self.normalize, self.m_init, self.clamp = normalize, m_init, clamp

    @property
    def has_constraint(self) -> bool:  # type: ignore[override]
        return (self.rank > 0 and self.normalize == "persistent") or (self.rank == 0 and self.clamp)

    def init_state(self, q, shape) -> None:
        if self.rank > 0 and shape is not None:
            z = torch.empty(self.rank, *shape)
            nn.init.xavier_normal_(z)
            q.Z = nn.Parameter(z)

    def init_latent_(self, w: Tensor, q) -> None:
        if self.m_init == "xavier":
            nn.init.xavier_normal_(w)

    def quantize(self, x: Tensor, q) -> Tensor:
        if self.rank == 0 or (not q.training and self.eval_mode == "mean"):
            return sign_ste(x)  # the sign of M: the normalisation is positive and leaves it unchanged
        eps = torch.randn(self.rank, device=x.device, dtype=x.dtype)
        return _VispaSign.apply(x, q.Z.to(x.dtype), eps, float(self.scale), self.normalize == "forward")

    def latent(self, w: Tensor, q=None) -> Tensor:
        """The mean the forward binarizes around: m_n = M / sqrt(A) (in ``forward`` mode; M itself otherwise)."""
        if self.rank == 0 or q is None or self.normalize != "forward":
            return w
        return w * torch.rsqrt((w * w + q.Z.detach().to(w.dtype).square().sum(0) / self.scale).clamp_min(1e-12))

    @torch.no_grad()
    def constrain_(self, w: Tensor, q) -> None:
        if self.rank == 0:
            w.clamp_(-1.0, 1.0)
            return
        gamma = (w.square() + q.Z.square().sum(0) / self.scale).clamp_min(1e-12).sqrt()
        w.div_(gamma)
        q.Z.div_(gamma)

    def predict(self, model: nn.Module, x: Tensor) -> Tensor:
        if self.eval_mode != "ensemble" or self.rank == 0:
            return model(x)
        out = model(x).float()
        for _ in range(self.samples - 1):
            out += model(x).float()
        return out / self.samples

    @classmethod
    def eval_cost(cls, hparams) -> int:
        # the ensemble's L forward passes, one sampled network, the mean network
        return int(hparams.get("samples", cls.hparam_defaults()["samples"])) + len(cls.eval_modes) - 1

    @classmethod
    def setting_label(cls, hparams) -> str:
        d = {**cls.hparam_defaults(), **hparams}
        return f"L={d['samples']}, K={d['rank']}"  # the paper's tables: L = 40 samples
