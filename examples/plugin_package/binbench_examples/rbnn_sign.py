"""RBNN's training-aware sign approximation: a surrogate whose shape follows a schedule over training.

The scheduled case of the plugin contract: binbench calls ``set_progress`` at the start of every epoch, and
``self.progress.fraction`` is e/E (the epoch within the stage over the stage's epochs), which the surrogate
reads in ``quantize``. ``bench.probe(name, x, progress=p)`` draws it at any point of training, and
``layer_diagnostics`` puts the t each epoch used into the run's history (``diag/rbnn_t``).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import Tensor

from bench import ConfigError, Estimator, register_estimator
from bench.functional import surrogate_sign


def rbnn_schedule(fraction: float, t_min: float, t_max: float) -> tuple[float, float]:
    """(k, t): t = 10^(log10 T_min + (log10 T_max - log10 T_min) e/E), k = max(1/t, 1)."""
    t = 10 ** (math.log10(t_min) + (math.log10(t_max) - math.log10(t_min)) * fraction)
    return max(1.0 / t, 1.0), t


def rbnn_grad(x: Tensor, k: float, t: float) -> Tensor:
    """max(0, k (sqrt(2) t - t^2 |x|)): the derivative of F(x) = k (-sign(x) t^2 x^2 / 2 + sqrt(2) t x)."""
    return torch.clamp(k * (math.sqrt(2.0) * t - t * t * x.abs()), min=0.0)


@register_estimator("rbnn_sign")
class RbnnSign(Estimator):
    r"""RBNN's training-aware sign approximation, without the rotation (Lin, Ji, Xu, Wu, Huang, Wang, Ling, Shao;
    NeurIPS 2020, "Rotated Binary Neural Network", sec. 3.4; code lmbxmu/RBNN cifar/modules/binarized_modules.py
    BinaryQuantize.backward, the schedule cifar/main.py Log_UP with T_min = 1e-2, T_max = 1e1 from
    cifar/utils/options.py).

    Forward:   x_b = sign(x),  sign(0) = +1
    Backward:  dL/dx = dL/dx_b * max(0, k (sqrt(2) t - t^2 |x|))
               (the derivative of F(x) = k (-sign(x) t^2 x^2 / 2 + sqrt(2) t x) on |x| < sqrt(2)/t, 0 outside)
    Schedule:  t = 10^(log10 T_min + (log10 T_max - log10 T_min) e/E),  k = max(1/t, 1)
               (early: a wide, flat window of height sqrt(2); late: a narrow spike of height sqrt(2) T_max
               on |x| < sqrt(2)/T_max, which approaches sign's own derivative)

    RBNN's code binarizes weights and activations with it; the rotation and RBNN's learnable scale are not part
    of this estimator (binbench's ``alpha`` scaling is the closest).

    Hyperparameters:
        t_min (float, default 0.01): T at the first epoch.
        t_max (float, default 10.0): T approached at the last epoch.
    """

    display_name = "RBNN training-aware sign"
    kinds = ("weight", "activation")
    native_activation = None  # RBNN binarizes activations with the same function

    def __init__(self, t_min: float = 1e-2, t_max: float = 10.0):
        super().__init__()
        if not (0 < t_min < math.inf and 0 < t_max < math.inf):
            raise ConfigError(f"rbnn_sign needs finite t_min > 0 and t_max > 0 (t moves between them on a log scale), "
                              f"got t_min={t_min}, t_max={t_max}")
        self.t_min = t_min
        self.t_max = t_max

    def kt(self) -> tuple[float, float]:
        """The surrogate's (k, t) at the current training progress."""
        return rbnn_schedule(self.progress.fraction, self.t_min, self.t_max)

    def quantize(self, x: Tensor, q) -> Tensor:
        k, t = self.kt()
        return surrogate_sign(x, partial(rbnn_grad, k=k, t=t))

    def layer_diagnostics(self, w: Tensor, q) -> dict[str, float]:
        # the epoch's t, so that the schedule a run followed is in its history (diag/rbnn_t) and MLflow metrics
        return {"rbnn_t": self.kt()[1]}
