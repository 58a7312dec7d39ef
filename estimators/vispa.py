from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bench import Estimator, register_estimator
from bench.functional import sign_ste


@register_estimator("vispa")
class Vispa(Estimator):
    r"""Gaussian variational inference with a low-rank SDP constraint, "VISPA" (Orecchia et al., NeurIPS 2024;
    official code snownus/bnn_vi, `models/sdp_wo_entropy.py`).

    Per binary layer: mean M (the latent weight), low-rank factor Z (K, *M.shape), variance scale S.
    Constraint (after every optimizer step and at initialisation; the official code projects before every
                forward, which is the same on every forward that follows a step):
               m_i^2 + ||z_i||^2 / S = 1 for every weight i        (SDP unit diagonal, Burer-Monteiro rank K)
    Sample:    r ~ N(0, I_K / S), one draw per layer per forward, shared by all weights and images;
               w = M + r^T Z  ~  N(M, Z^T Z / S)
    Forward:   w_b = sign(w)                                       (identity STE, no clipping)
    Backward:  dL/dM = dL/dw_b ;  dL/dZ = r * dL/dw_b * sqrt(S)    (Theorem 1 in the coordinates
               Z_paper = Z / sqrt(S): grad_Z E[L] = E[g eps^T], eps = sqrt(S) r ~ N(0, I))
    Evaluation modes: ``ensemble`` (average the logits of L independently sampled networks; L = 40 as
               published; the headline), ``sample`` (one sampled network), ``mean`` (sign(M)).
    Scaling:   learnable per-channel alpha ~ U(0, 1).  Activations: ApproxSign (W1A1), real (W1A32).

    Hyperparameters:
        rank (int, default 4): K. ``rank=0`` is the ablation without Z: latent weights + STE + clipping
            |m_i| <= 1 (the diagonal/LP special case the paper describes), with no sampling.
        scale (float, default 100.0): S (= s^2 with the paper's init scaling s = 10).
        samples (int, default 40): L for the ensemble evaluation.
    """

    kinds = ("weight",)
    native_scaling = "alpha"
    native_activation = "approx_sign"
    eval_modes = ("ensemble", "sample", "mean")
    has_constraint = True
    stochastic = True
    published = [
        ({}, {"optimizer": "sgd", "momentum": 0.9, "lr_schedule": "cosine", "warmup_epochs": 5, "lr": 0.5,
              "weight_decay": 1e-5, "estimator_hparams": {"rank": 4, "scale": 100.0, "samples": 40}}),
        ({"a_bits": 32}, {"lr": 0.1, "weight_decay": 5e-4, "estimator_hparams": {"rank": 8}}),
        ({"dataset": "cifar*"}, {"epochs": 600, "batch_size": 256}),
        ({"dataset": "cifar*", "a_bits": 32}, {"epochs": 500}),
        ({"dataset": "tiny-imagenet"}, {"epochs": 500, "batch_size": 256}),
        ({"model": "vgg_small"}, {"model_args": {"act": "prelu"}}),
        ({"dataset": "imagenet"}, {"epochs": 200, "estimator_hparams": {"rank": 2}}),
        ({"dataset": "imagenet", "a_bits": 32}, {"lr": 0.1, "weight_decay": 5e-5, "estimator_hparams": {"rank": 4}}),
    ]

    def __init__(self, rank: int = 4, scale: float = 100.0, samples: int = 40):
        super().__init__()
        if rank < 0 or samples < 1 or scale <= 0:
            from bench.errors import ConfigError

            raise ConfigError(f"vispa needs rank >= 0, samples >= 1 and scale > 0 (got {rank}, {samples}, {scale})")
        self.rank, self.scale, self.samples = rank, scale, samples

    def init_state(self, q, shape) -> None:
        if self.rank > 0 and shape is not None:
            z = torch.empty(self.rank, *shape)
            nn.init.xavier_normal_(z)
            q.Z = nn.Parameter(z)

    def sample(self, m: Tensor, q) -> Tensor:
        """w = M + r^T Z with the gradient routing above (real-valued, before the sign)."""
        if self.rank == 0 or (not q.training and self.eval_mode == "mean"):
            return m
        eps = torch.randn(self.rank, device=m.device, dtype=m.dtype)
        z = q.Z
        z_scaled = z - (z - z / math.sqrt(self.scale)).detach()  # value Z / sqrt(S), gradient 1 w.r.t. Z
        return m + torch.tensordot(eps, z_scaled, dims=1)

    def quantize(self, x: Tensor, q) -> Tensor:
        w = self.sample(x, q)
        return sign_ste(w)

    def latent(self, w: Tensor, q=None) -> Tensor:
        return w

    @torch.no_grad()
    def constrain_(self, w: Tensor, q) -> None:
        if self.rank == 0:
            w.clamp_(-1.0, 1.0)
            return
        gamma = (w.square() + q.Z.square().sum(0) / self.scale).clamp_min(1e-12).sqrt()
        w.div_(gamma)
        q.Z.div_(gamma)

    def predict(self, model: nn.Module, x: Tensor, mode: str) -> Tensor:
        if mode != "ensemble" or self.rank == 0:
            return model(x)
        out = model(x).float()
        for _ in range(self.samples - 1):
            out += model(x).float()
        return out / self.samples
