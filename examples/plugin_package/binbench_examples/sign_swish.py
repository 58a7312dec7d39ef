"""SignSwish (BNN+): a fixed surrogate, no per-layer state (the smallest estimator a package can hold)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from bench import Estimator, register_estimator
from bench.functional import surrogate_sign


def sign_swish_grad(x: Tensor, beta: float) -> Tensor:
    """d/dx SS_beta(x) = beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))."""
    bx = beta * x
    return beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))


@register_estimator("sign_swish")
class SignSwish(Estimator):
    r"""SignSwish (Darabi et al., BNN+, arXiv 1812.11800, 2018).

    Forward:   x_b = sign(x),  sign(0) = +1
    Backward:  dL/dx = dL/dx_b * beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x)),
               the derivative of SS_beta(x) = 2 sigmoid(beta x) (1 + beta x (1 - sigmoid(beta x))) - 1.

    Hyperparameters:
        beta (float, default 5.0): sharpness; the peak gradient at 0 is beta.
    """

    native_activation = None

    def __init__(self, beta: float = 5.0):
        super().__init__()
        self.beta = beta

    def quantize(self, x: Tensor, q) -> Tensor:
        return surrogate_sign(x, partial(sign_swish_grad, beta=self.beta))
