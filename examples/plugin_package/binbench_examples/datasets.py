"""A dataset plugin: ``stripes``, a synthetic 4-class image set made from a fixed seed (no download, no files).

A dataset is a :class:`bench.data.DatasetSpec` registered with :func:`bench.data.register_dataset`: its shape,
normalisation, augmentation, default epochs and batch size, and a ``loader(root, download)`` that returns the four
uint8/int64 tensors. binbench keeps them on the training device and batches them itself.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.data import DatasetSpec, DatasetTensors, register_dataset


def _stripes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k: stripes of orientation k (rows, columns, two diagonals) with random phase and pixel noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    i, j = torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij")
    coord = torch.stack([i, j, i + j, i - j])  # (4, 12, 12)
    phase = torch.randint(0, 4, (n, 1, 1), generator=g)
    img = ((coord[y] + phase) % 4 < 2).float() * 200 + torch.rand(n, 12, 12, generator=g) * 55
    return img.to(torch.uint8).unsqueeze(1), y


def _load(root: Path, download: bool = False) -> DatasetTensors:
    train_x, train_y = _stripes(2000, 0)
    test_x, test_y = _stripes(500, 1)
    return DatasetTensors(train_x, train_y, test_x, test_y, source="stripes (synthetic, seeded)")


register_dataset(DatasetSpec("stripes", 4, (1, 12, 12), (0.45,), (0.4,), "none", 5, 64, "", "made in memory",
                             _load, train_images=2000, test_images=500))
