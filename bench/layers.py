"""Binary layers: conv and linear layers whose weights and inputs are binarized by estimators.

The layer owns what is common to every estimator (which tensor is binarized, the weight scaling scheme);
the estimator's quantizer owns the forward/backward of the sign. Scaling schemes, as the official repositories use them:

* ``none``     w_b = sign(w_hat)
* ``mean``     w_b = mean_c |w_hat| * sign(w_hat), per output channel, detached (XNOR/ReActNet)
* ``alpha``    y = alpha_c * conv(x_b, w_b), learnable per channel, alpha ~ U(0, 1)
* ``internal`` the estimator scales inside its quantizer (a layer's mean|W|, a power of two)
"""
# alpha: as the ReCU, BiPer and VISPA code; internal: ReSTE's layer mean|W|, IR-Net's power of two

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.config import SCALINGS
from bench.errors import ConfigError
from bench.estimator import Estimator
from bench.functional import channel_dims, channel_view


class _Binary:
    """Shared set-up of BinaryConv2d and BinaryLinear."""

    weight: nn.Parameter
    out_features_: int

    def _setup(self, weight_est: Estimator | None, act_est: Estimator | None, scaling: str) -> None:
        if scaling not in SCALINGS:
            raise ConfigError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
        if scaling == "internal" and weight_est is not None and weight_est.native_scaling != "internal":
            raise ConfigError(f"estimator {weight_est.name!r} has no internal scaling; use none, mean or alpha")
        self.scaling = scaling if weight_est is not None else "none"
        self.weight_quantizer = (
            weight_est.quantizer("weight", tuple(self.weight.shape), internal_scale=self.scaling == "internal")
            if weight_est is not None
            else None
        )
        # the estimator reads (or re-initialises) the weight in ``init_latents_``, after the model's own init:
        # a model that re-initialises its convs after building them (resnet, vgg) would otherwise leave the
        # estimator holding statistics of weights that were thrown away
        self.latent_ready = False
        # the input's channel count (conv in_channels, linear in_features): per-channel activation state such as
        # ReActNet's learnable thresholds is created at construction, not lazily on the first batch
        self.input_quantizer = (act_est.quantizer("activation", (self._in_channels(),))
                                if act_est is not None else None)
        if self.scaling == "alpha":
            self.alpha = nn.Parameter(torch.rand(self.weight.shape[0]))

    def _in_channels(self) -> int:
        return int(self.in_channels if isinstance(self, nn.Conv2d) else self.in_features)

    def binary_weight(self) -> Tensor:
        w = self.weight
        if self.weight_quantizer is None:
            return w
        wb = self.weight_quantizer(w)
        if self.scaling == "mean":
            w_hat = self.weight_quantizer.estimator.latent(w, self.weight_quantizer).detach()
            wb = wb * channel_view(w_hat.abs().mean(dim=channel_dims(w_hat)), w)
        return wb

    def binary_input(self, x: Tensor) -> Tensor:
        return self.input_quantizer(x) if self.input_quantizer is not None else x


class BinaryConv2d(_Binary, nn.Conv2d):
    """nn.Conv2d with binarized weights and/or inputs; keeps bias, stride, padding, dilation and groups."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = False, *, weight_estimator: Estimator | None = None,
                 activation_estimator: Estimator | None = None, scaling: str = "none"):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self._setup(weight_estimator, activation_estimator, scaling)

    def forward(self, x: Tensor) -> Tensor:
        out = self._conv_forward(self.binary_input(x), self.binary_weight(), self.bias)
        if self.scaling == "alpha":
            out = out * self.alpha.view(1, -1, 1, 1).to(out.dtype)
        return out


class BinaryLinear(_Binary, nn.Linear):
    """nn.Linear with binarized weights and/or inputs."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight_estimator: Estimator | None = None, activation_estimator: Estimator | None = None,
                 scaling: str = "none"):
        nn.Linear.__init__(self, in_features, out_features, bias)
        self._setup(weight_estimator, activation_estimator, scaling)

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(self.binary_input(x), self.binary_weight(), self.bias)
        if self.scaling == "alpha":
            out = out * self.alpha.to(out.dtype)
        return out


BINARY_LAYERS = (BinaryConv2d, BinaryLinear)


@dataclass
class BinarySpec:
    """How a model's binarizable layers are made: which estimators, which scaling.

    ``weight`` None means real weights (W32), ``activation`` None real inputs (A32).
    """

    weight: Estimator | None = None
    activation: Estimator | None = None
    scaling: str = "none"

    @property
    def binary(self) -> bool:
        return self.weight is not None or self.activation is not None

    @property
    def binary_activations(self) -> bool:
        return self.activation is not None

    def without_activation(self) -> BinarySpec:
        return BinarySpec(self.weight, None, self.scaling)

    def conv(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
             dilation: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
        if not self.binary:
            return nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, groups, bias)
        return BinaryConv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, groups, bias,
                            weight_estimator=self.weight, activation_estimator=self.activation,
                            scaling=self.scaling)

    def linear(self, in_f: int, out_f: int, bias: bool = True) -> nn.Linear:
        if not self.binary:
            return nn.Linear(in_f, out_f, bias)
        return BinaryLinear(in_f, out_f, bias, weight_estimator=self.weight, activation_estimator=self.activation,
                            scaling=self.scaling)


FP = BinarySpec()


def init_latents_(model: nn.Module) -> nn.Module:
    """Let every binary layer's weight estimator derive its state from the weight the optimizer will train
    (``Estimator.init_latent_``: a clipping range from max|w|, an init of its own), once per layer, in module order.

    ``bench.models.create_model`` calls it after the model function returns, so it runs after whatever
    initialisation the model (built-in or a plugin's) applies to its layers. Layers built outside
    ``create_model`` need this call before training; a layer already initialised is left alone, so calling it
    again (``train`` does, after lazy parameters are materialised) changes nothing.
    """
    with torch.no_grad():
        for _, layer in binary_layers(model):
            if not layer.latent_ready and not isinstance(layer.weight, nn.parameter.UninitializedParameter):
                layer.weight_quantizer.estimator.init_latent_(layer.weight, layer.weight_quantizer)
                layer.latent_ready = True
    return model


def binary_layers(model: nn.Module) -> list[tuple[str, _Binary]]:
    """(name, layer) of every binary layer with a weight quantizer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BINARY_LAYERS) and m.weight_quantizer is not None]
