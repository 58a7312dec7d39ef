"""Streaming loaders for datasets too large to sit in memory (ImageNet): ImageFolder + DataLoader.

They offer the same ``batches(seed, stage, epoch)`` interface as the resident loader, with the order fixed by
the seed, and pinned-memory, non-blocking copies to the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from bench.data import IMAGENET_MEAN, IMAGENET_STD
from bench.data.sources import IMAGENET_HOW, _missing


class StreamingLoader:
    def __init__(self, dataset, batch_size: int, device: torch.device, train: bool, workers: int):
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.train, self.workers = train, workers

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def batches(self, seed: int = 0, stage: int = 0, epoch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator()
        gen.manual_seed((seed * 1_000_003 + stage * 10_007 + epoch) % (2**63))
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=self.train, generator=gen, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False, drop_last=False)
        for xb, yb in loader:
            yield xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)


def imagenet_loaders(root: str | Path, batch_size: int, eval_batch_size: int, device: torch.device,
                     workers: int = 8, image_size: int = 224) -> tuple[StreamingLoader, StreamingLoader]:
    """Train (RandomResizedCrop + flip) and val (resize 1/0.875 + center crop) loaders over
    ``<root>/imagenet/{train,val}/<wnid>/*.JPEG``."""
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    base = Path(root) / "imagenet"
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise _missing("imagenet", base, IMAGENET_HOW)
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    val_tf = T.Compose([T.Resize(int(image_size / 0.875)), T.CenterCrop(image_size), T.ToTensor(), norm])
    train = ImageFolder(str(base / "train"), transform=train_tf)
    val = ImageFolder(str(base / "val"), transform=val_tf)
    return (StreamingLoader(train, batch_size, device, True, workers),
            StreamingLoader(val, eval_batch_size, device, False, workers))
