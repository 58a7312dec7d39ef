"""A model plugin: a small all-binary conv net, registered through the entry-point group ``binbench.models``.

A model function takes ``(spec, num_classes, in_shape, **model_args)`` and builds its binarizable layers with
``spec.conv(...)`` and ``spec.linear(...)`` (a :class:`bench.layers.BinarySpec`: the run's estimators and scaling),
everything else with plain torch modules. Its keyword arguments with defaults are the model arguments a user sets
with ``--set model.NAME=V``. binbench lets the estimators read the weights after this function returns
(``init_latent_``), so the model may initialise its layers however it likes.
"""

from __future__ import annotations

from torch import nn

from bench.layers import BinarySpec
from bench.models import register_model


@register_model("tiny_bnn")
def tiny_bnn(spec: BinarySpec, num_classes: int, in_shape: tuple[int, ...], width: int = 16) -> nn.Module:
    """Two binary 3x3 convs (BN, hardtanh, 2x2 max-pool) and a binary linear head: every layer binary."""
    c = in_shape[0]
    first = spec.without_activation()  # the image itself is not binarized
    net = nn.Sequential(first.conv(c, width, 3, 1, 1), nn.BatchNorm2d(width), nn.Hardtanh(), nn.MaxPool2d(2),
                        spec.conv(width, 2 * width, 3, 1, 1), nn.BatchNorm2d(2 * width), nn.Hardtanh(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), spec.linear(8 * width, num_classes))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # a model's own init is fine
    return net
