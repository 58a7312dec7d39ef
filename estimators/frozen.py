from __future__ import annotations

import torch
from torch import Tensor

from bench import Estimator, register_estimator
from bench.functional import sign


@register_estimator("frozen")
class Frozen(Estimator):
    r"""The frozen-sign CONTROL, not a method: the binary weights are the signs at initialisation and never change.

    Forward, with :math:`w_0` the latent weights as the model initialised them:

    .. math::

        w_b = \operatorname{sign}(w_0)

    Backward: no gradient reaches the latent weights, so neither SGD nor weight decay moves them:

    .. math::

        \frac{\partial L}{\partial w} = 0

    Everything else trains as usual: the scaling (alpha), BatchNorm, the full-precision layers, the activation
    estimator. A suite cell in which a real estimator does not beat this control by a clear margin cannot tell
    a trained binary network from an untrained one: its full-precision parts carry the accuracy.

    No paper or code: a control of binbench's own (a network whose binary weights are never trained), not a
    published method.
    """

    display_name = "control (frozen)"

    kinds = ("weight",)
    role = "control"

    def quantize(self, x: Tensor, q) -> Tensor:
        return sign(x.detach())

    def saturated(self, w: Tensor, q) -> Tensor:
        return torch.ones_like(w, dtype=torch.bool)  # nothing is inside a gradient support
