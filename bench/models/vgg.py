"""VGG-small (LQ-Nets and the papers that follow it) and VGG16 (BayesBiNN's W1A32 tables)."""
# VGG-small as in the ReCU and BiPer code; VGG16 as in BayesBiNN and VISPA's W1A32 tables

from __future__ import annotations

from torch import Tensor, nn

from bench.layers import FP, BinarySpec
from bench.models import MaxPool2d, default_act, make_act, register_model


class VGGSmall(nn.Module):
    def __init__(self, spec: BinarySpec, num_classes: int, in_channels: int, act: str, binarize_first_last: bool):
        super().__init__()
        first = spec.without_activation() if binarize_first_last else FP
        cfg = [(128, False), (128, True), (256, False), (256, True), (512, False), (512, True)]
        layers: list[nn.Module] = []
        prev = in_channels
        for i, (ch, pool) in enumerate(cfg):
            layers.append((first if i == 0 else spec).conv(prev, ch, 3, 1, 1))
            if pool:
                layers.append(MaxPool2d(2))
            layers += [nn.BatchNorm2d(ch), make_act(act, ch)]
            prev = ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)  # identity at 32x32 inputs; lets 28x28 inputs through
        self.fc = (spec if binarize_first_last else FP).linear(512 * 16, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, (2.0 / n) ** 0.5)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@register_model("vgg_small")
def vgg_small(spec: BinarySpec, num_classes: int, in_shape: tuple[int, ...], binarize_first_last: bool = False,
              act: str | None = None) -> nn.Module:
    """conv0 (FP) then five binary 3x3 convs 128-128-256-256-512-512 with max-pools, FP linear 8192 -> classes.
    Order conv -> [maxpool] -> BN -> act; act='prelu' for the PReLU variant."""
    # the order of the ReCU/BiPer code; VISPA's paper describes the PReLU variant
    return VGGSmall(spec, num_classes, in_shape[0], default_act(spec, act), binarize_first_last)


class VGG16(nn.Module):
    CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]

    def __init__(self, spec: BinarySpec, num_classes: int, in_shape: tuple[int, ...], act: str,
                 binarize_first_last: bool, hidden: int):
        super().__init__()
        first = spec.without_activation() if binarize_first_last else FP
        layers: list[nn.Module] = []
        prev = in_shape[0]
        for v in self.CFG:
            if v == "M":
                layers.append(MaxPool2d(2))
                continue
            layers += [(first if prev == in_shape[0] and not layers else spec).conv(prev, v, 3, 1, 1),
                       nn.BatchNorm2d(v, affine=False, momentum=0.2), make_act(act, v)]
            prev = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        last = spec if binarize_first_last else FP
        self.classifier = nn.Sequential(
            spec.linear(512, hidden, bias=False), nn.BatchNorm1d(hidden, affine=False, momentum=0.2), make_act(act),
            spec.linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden, affine=False, momentum=0.2),
            make_act(act), last.linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("vgg16")
def vgg16(spec: BinarySpec, num_classes: int, in_shape: tuple[int, ...], binarize_first_last: bool = True,
          act: str | None = None, hidden: int = 512) -> nn.Module:
    # binarize_first_last=True by default, as in BayesBiNN and VISPA
    """13 conv + 3 FC layers, every one binarizable (binarize_first_last=True by default, as in BayesBiNN);
    BN with affine=False and momentum 0.2. The FC widths (512-512) are this project's choice [UNCERTAIN]."""
    return VGG16(spec, num_classes, in_shape, default_act(spec, act), binarize_first_last, hidden)
