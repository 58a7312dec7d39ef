from __future__ import annotations

from functools import partial

from torch import Tensor

from bench import Estimator, register_estimator
from bench.functional import surrogate_sign


def _clipped_grad(x: Tensor, t: float) -> Tensor:
    return (x.abs() <= t).to(x.dtype)


@register_estimator("clipped_ste")
class ClippedSteSign(Estimator):
    r"""Clipped straight-through estimator, the gradient of hardtanh (BNN; Hubara et al., NeurIPS 2016).

    Forward, with sign(0) = +1:

    .. math::

        x_b = \operatorname{sign}(x)

    Backward:

    .. math::

        \frac{\partial L}{\partial x} = \frac{\partial L}{\partial x_b} \cdot \mathbb{1}\{|x| \le t\}

    Paper: https://arxiv.org/abs/1602.02830 (Courbariaux, Hubara, Soudry, El-Yaniv, Bengio, "Binarized Neural
    Networks: Training Deep Neural Networks with Weights and Activations Constrained to +1 or -1"; NeurIPS 2016 as
    "Binarized Neural Networks", Hubara et al.).
    Code: https://github.com/MatthieuCourbariaux/BinaryNet (the authors' Theano code; a PyTorch version by an
    author: https://github.com/itayhubara/BinaryNet.pytorch).

    Hyperparameters:
        t (float, default 1.0): clipping threshold (ReSTE with o = 1 equals this with t = 1.5).

    BNN applies it to weights and activations (its own recipe uses it for both).
    """

    display_name = "Clipped STE (BNN)"
    published_name = "bnn"  # published.csv names the method BNN

    native_activation = None  # itself
    sample_wise = True  # sign with a clipped identity gradient: element by element
    published = None  # BNN's own recipe is not in an official repository binbench could read

    def __init__(self, t: float = 1.0):
        super().__init__()
        self.t = t

    def quantize(self, x: Tensor, q) -> Tensor:
        return surrogate_sign(x, partial(_clipped_grad, t=self.t))
