from __future__ import annotations

import torch
from torch import Tensor

from bench import Estimator, register_estimator
from bench.functional import surrogate_sign


def approx_sign_grad(x: Tensor) -> Tensor:
    """max(0, 2 - 2|x|): the derivative of Bi-Real's piecewise-quadratic sign approximation."""
    return torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)


@register_estimator("approx_sign")
class ApproxSign(Estimator):
    r"""Bi-Real Net's ApproxSign (Liu et al., ECCV 2018), the activation estimator of ReCU, BiPer and VISPA.

    Forward:   a_b = sign(a0),  sign(0) = +1
    Backward:  dL/da0 = dL/da_b * max(0, 2 - 2|a0|)
               (= 2 + 2a on [-1, 0), 2 - 2a on [0, 1), 0 elsewhere: the derivative of
               F(a) = -1 (a < -1), a^2 + 2a ([-1, 0)), -a^2 + 2a ([0, 1)), 1 (a >= 1))

    Hyperparameters:
        std_normalize (bool, default False): in training mode divide each sample by its std over (C, H, W)
            first, a0 = a / sqrt(Var(a) + 1e-5), as the ReCU/BiPer code does; evaluation uses a0 = a.
            Sign is scale invariant: this only moves where the backward window sits.
    """

    display_name = "ApproxSign (Bi-Real)"
    common_activation = True  # the common recipe binarizes activations with it

    native_activation = None

    def __init__(self, std_normalize: bool = False):
        super().__init__()
        self.std_normalize = std_normalize

    def quantize(self, x: Tensor, q) -> Tensor:
        if self.std_normalize and q.training and x.dim() > 1:
            dims = tuple(range(1, x.dim()))
            x = x / torch.sqrt(x.var(dim=dims, keepdim=True) + 1e-5)
        return surrogate_sign(x, approx_sign_grad)
