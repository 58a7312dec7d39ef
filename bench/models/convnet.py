"""A small binary conv net for 28x28 inputs (MNIST, Fashion-MNIST)."""

from __future__ import annotations

from torch import Tensor, nn

from bench.layers import FP, BinarySpec
from bench.models import MaxPool2d, default_act, make_act, register_model


class ConvNet(nn.Module):
    def __init__(self, spec: BinarySpec, num_classes: int, in_channels: int, widths: tuple[int, ...], act: str,
                 binarize_first_last: bool):
        super().__init__()
        first = spec.without_activation() if binarize_first_last else FP
        layers: list[nn.Module] = []
        prev = in_channels
        for i, w in enumerate(widths):  # conv -> max-pool -> BN -> act, the VGG-small order
            layers += [(first if i == 0 else spec).conv(prev, w, 3, 1, 1), MaxPool2d(2), nn.BatchNorm2d(w),
                       make_act(act, w)]
            prev = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = (spec if binarize_first_last else FP).linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model("convnet")
def convnet(spec: BinarySpec, num_classes: int, in_shape: tuple[int, ...], binarize_first_last: bool = False,
            widths: tuple[int, ...] = (32, 64, 128), act: str | None = None) -> nn.Module:
    """FP conv 3x3 (32) then binary 3x3 convs (64, 128), each followed by a 2x2 max-pool; global average pool;
    FP linear. About 7 M multiply-adds per 28x28 image: small enough for CPU suites."""
    return ConvNet(spec, num_classes, in_shape[0], tuple(widths), default_act(spec, act), binarize_first_last)
