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

    Forward, with sign(0) = +1:

    .. math::

        a_b = \operatorname{sign}(a_0)

    Backward, the derivative of Bi-Real's piecewise-quadratic approximation F of the sign:

    .. math::

        \frac{\partial L}{\partial a_0} = \frac{\partial L}{\partial a_b} \max(0, 2 - 2|a_0|)

        F(a) = \begin{cases} -1 & \text{if } a < -1 \\ a^2 + 2a & \text{if } -1 \le a < 0 \\
        -a^2 + 2a & \text{if } 0 \le a < 1 \\ 1 & \text{if } a \ge 1 \end{cases}

    Paper: https://arxiv.org/abs/1808.00278 (ECCV 2018, "Bi-Real Net: Enhancing the Performance of 1-bit CNNs With
    Improved Representational Capability and Advanced Training Algorithm").
    Code: https://github.com/liuzechun/Bi-Real-net (the authors' code; this estimator is ``BinaryActivation`` in
    ``pytorch_implementation/BiReal18_34/birealnet.py``, and ReCU's and BiPer's ``binarized_modules.py`` copy it).

    Hyperparameters:
        std_normalize (bool, default False): in training mode divide each sample by its std over (C, H, W)
            first, :math:`a_0 = a / \sqrt{\operatorname{Var}(a) + 10^{-5}}`, as the ReCU/BiPer code does; evaluation
            uses :math:`a_0 = a`. Sign is scale invariant: this only moves where the backward window sits.
    """

    display_name = "ApproxSign (Bi-Real)"
    common_activation = True  # the common recipe binarizes activations with it

    native_activation = None
    sample_wise = True  # element by element (std_normalize: each sample's own variance)

    def __init__(self, std_normalize: bool = False):
        super().__init__()
        self.std_normalize = std_normalize

    def quantize(self, x: Tensor, q) -> Tensor:
        if self.std_normalize and q.training and x.dim() > 1:
            dims = tuple(range(1, x.dim()))
            x = x / torch.sqrt(x.var(dim=dims, keepdim=True) + 1e-5)
        return surrogate_sign(x, approx_sign_grad)
