"""Bi-Real style ResNet-18/34 for ImageNet-size inputs.

Stem FP conv7x7/2 -> BN -> maxpool; every binary conv has its own shortcut (out = BN(conv(x)) + x);
downsampling: AvgPool2d(2) -> FP conv1x1 -> BN (Bi-Real/ReActNet); head: avgpool -> FP linear.
"""

from __future__ import annotations

from torch import Tensor, nn

from bench.layers import FP, BinarySpec
from bench.models import make_act, register_model


class BiRealConvUnit(nn.Module):
    def __init__(self, spec: BinarySpec, in_planes: int, planes: int, stride: int, act: str):
        super().__init__()
        self.conv = spec.conv(in_planes, planes, 3, stride, 1)
        self.bn = nn.BatchNorm2d(planes)
        self.act = make_act(act, planes)
        self.down = (
            nn.Sequential(nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False) if stride != 1 else nn.Identity(),
                          nn.Conv2d(in_planes, planes, 1, bias=False), nn.BatchNorm2d(planes))
            if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)) + self.down(x))


class ImageNetResNet(nn.Module):
    def __init__(self, blocks: list[int], spec: BinarySpec, num_classes: int, in_channels: int, act: str,
                 binarize_first_last: bool):
        super().__init__()
        first = spec.without_activation() if binarize_first_last else FP
        self.stem = nn.Sequential(first.conv(in_channels, 64, 7, 2, 3), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        units = []
        in_planes = 64
        for i, (n, planes) in enumerate(zip(blocks, [64, 128, 256, 512], strict=True)):
            for j in range(2 * n):  # two binary convs per basic block, each with its own shortcut
                units.append(BiRealConvUnit(spec, in_planes, planes, 2 if (i > 0 and j == 0) else 1, act))
                in_planes = planes
        self.units = nn.Sequential(*units)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = (spec if binarize_first_last else FP).linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.units(self.stem(x))).flatten(1))


def imagenet_resnet(blocks: list[int], spec: BinarySpec, num_classes: int, in_shape: tuple[int, ...],
                    binarize_first_last: bool, act: str | None) -> nn.Module:
    act = act if act is not None else ("identity" if spec.binary_activations else "relu")
    return ImageNetResNet(blocks, spec, num_classes, in_shape[0], act, binarize_first_last)


@register_model("resnet34")
def resnet34(spec: BinarySpec, num_classes: int, in_shape: tuple[int, ...], binarize_first_last: bool = False,
             act: str | None = None) -> nn.Module:
    """Bi-Real ResNet-34 for ImageNet-size inputs."""
    return imagenet_resnet([3, 4, 6, 3], spec, num_classes, in_shape, binarize_first_last, act)
