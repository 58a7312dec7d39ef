"""RSign (ReActNet): sign(x - beta_c) with a learnable threshold per input channel.

The per-channel case of the plugin contract: the estimator keeps learnable state on each layer's quantizer.
binbench tells an activation quantizer the layer's input channel count at construction
(``init_state(q, shape)`` with ``shape = (C,)``: conv ``in_channels``, linear ``in_features``), so the
thresholds are an ordinary ``nn.Parameter`` of their final size: the optimizer trains them, checkpoints and
the run's final model (MLflow artifact) hold them as ``<layer>.input_quantizer.beta``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bench import ConfigError, Estimator, register_estimator
from bench.functional import surrogate_sign


def approx_sign_grad(u: Tensor) -> Tensor:
    """max(0, 2 - 2|u|): the derivative of Bi-Real's piecewise-quadratic ApproxSign."""
    return torch.clamp(2.0 - 2.0 * u.abs(), min=0.0)


def channel_thresholds(beta: Tensor, x: Tensor) -> Tensor:
    """``beta`` (C entries) shaped to broadcast against ``x``: (1, C) for (N, C), (1, C, 1, 1) for (N, C, H, W).

    A single threshold (a quantizer built outside a layer, e.g. by ``bench.probe``) broadcasts against any x.
    """
    if beta.numel() == 1:
        return beta.reshape(())
    if x.dim() < 2 or x.shape[1] != beta.numel():
        raise ConfigError(f"rsign holds {beta.numel()} channel thresholds but its input has shape "
                          f"{tuple(x.shape)}: it needs (N, {beta.numel()}, ...), channels in dimension 1")
    return beta.view(1, -1, *([1] * (x.dim() - 2)))


def rsign(x: Tensor, beta: Tensor) -> Tensor:
    """a_b = sign(x - beta_c) forward; ApproxSign's max(0, 2 - 2|u|), u = x - beta_c, backward to x and beta.

    Autograd does the rest of the chain rule: d u / d x = 1 and d u / d beta_c = -1, and broadcasting sums
    beta's gradient over the batch (and spatial) positions of its channel.
    """
    u = x - channel_thresholds(beta, x).to(x.dtype)
    return surrogate_sign(u, approx_sign_grad)


@register_estimator("rsign")
class RSign(Estimator):
    r"""RSign, ReActNet's learnable-threshold sign (Liu, Shen, Savvides, Cheng; ECCV 2020, "ReActNet: Towards
    Precise Binary Neural Network with Generalized Activation Functions", arXiv 2003.03488; official code
    liuzechun/ReActNet mobilenet/1_step1/reactnet.py: LearnableBias, a zero-initialised (1, C, 1, 1) bias b added
    before BinaryActivation, Bi-Real's ApproxSign; beta_c = -b_c here).

    Forward:   a_b = sign(x - beta_c),  sign(0) = +1,  beta_c learnable, one per input channel c, initialised 0
    Backward:  u = x - beta_c,  g(u) = max(0, 2 - 2|u|)        (Bi-Real's ApproxSign derivative)
               dL/dx      = dL/da_b * g(u)
               dL/dbeta_c = -sum over the batch and spatial positions of channel c of dL/da_b * g(u)

    Activations only. Without a layer (``bench.probe``) it keeps a single threshold.
    """

    display_name = "RSign (ReActNet)"
    kinds = ("activation",)
    native_activation = None

    def init_state(self, q, shape: tuple[int, ...] | None) -> None:
        channels = int(shape[0]) if shape else 1
        q.beta = nn.Parameter(torch.zeros(channels))

    def quantize(self, x: Tensor, q) -> Tensor:
        return rsign(x, q.beta)
