"""Batches from device-resident uint8 tensors, augmented and normalised as batched tensor ops.

No per-image Python and no worker processes: the whole split sits on the training device once, each batch is
an index gather, a random crop (zero padding, as torchvision's RandomCrop(padding=4)), a flip and a
per-channel affine normalisation, all for the whole batch at once. The order of every epoch is a function of
(seed, stage, epoch) only, so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.data import DatasetSpec


class ResidentLoader:
    def __init__(self, x: Tensor, y: Tensor, spec: DatasetSpec, batch_size: int, device: torch.device,
                 train: bool, augment: bool = True, drop_last: bool = False, channels_last: bool = False):
        self.x = x.to(device)
        self.y = y.to(device)
        self.n = int(self.y.shape[0])
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.augment = spec.augment if (augment and train) else "none"
        self.pad = 4 if self.augment == "crop_flip" else 0
        self.drop_last = drop_last
        self.channels_last = channels_last and self.x.dim() == 4
        mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)  # x/255 - mean)/std == x * scale + shift
        self.shift = -mean / std

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def batches(self, seed: int = 0, stage: int = 0, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator(device="cpu")
        gen.manual_seed((seed * 1_000_003 + stage * 10_007 + epoch) % (2**63))
        order = torch.randperm(self.n, generator=gen).to(self.device) if self.train else None
        for i in range(len(self)):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, self.n)
            if order is not None:
                idx = order[lo:hi]
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
            else:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            yield self.transform(xb, gen), yb

    def transform(self, xb: Tensor, gen: torch.Generator) -> Tensor:
        x = xb.float()
        if self.augment in ("crop_flip", "resized_crop_flip"):
            x = random_crop_flip(x, self.pad if self.augment == "crop_flip" else x.shape[-1] // 8, gen)
        x = x * self.scale + self.shift
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def random_crop_flip(x: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """Per-image random crop of the zero-padded batch back to its size, then a random horizontal flip.

    Zero padding happens before normalisation, like torchvision's RandomCrop on the PIL image.
    """
    b, _, h, w = x.shape
    offs = torch.randint(0, 2 * pad + 1, (2, b), generator=gen).to(x.device)
    flip = torch.rand(b, generator=gen).to(x.device) < 0.5
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (offs[0].view(b, 1) + torch.arange(h, device=x.device).view(1, h))  # (B, H)
    cols = (offs[1].view(b, 1) + torch.arange(w, device=x.device).view(1, w))  # (B, W)
    cols = torch.where(flip.view(b, 1), cols.flip(1), cols)
    # gather rows then columns: (B, C, H, Wp) then (B, C, H, W)
    xr = xp.gather(2, rows.view(b, 1, h, 1).expand(b, x.shape[1], h, xp.shape[3]))
    return xr.gather(3, cols.view(b, 1, 1, w).expand(b, x.shape[1], h, w))
