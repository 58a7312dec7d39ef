"""Dataset registry and data-root resolution.

Each dataset decodes once into uint8 tensors (N, C, H, W) plus int64 labels; training then runs from
device-resident tensors with batched augmentation (:mod:`bench.data.loader`). ImageNet is the exception:
it streams from an ImageFolder through a DataLoader.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from bench.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    """What binbench knows about a dataset before loading it."""

    name: str
    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W) as the model sees it
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # "none", "crop_flip" (pad 4), "resized_crop_flip"
    default_epochs: int
    default_batch_size: int
    folder: str  # where under the data root its files live
    how_to_get: str
    loader: Callable[..., DatasetTensors]
    streaming: bool = False

    @property
    def pad(self) -> int:
        return 4 if self.augment == "crop_flip" else 0


@dataclass
class DatasetTensors:
    train_x: Tensor  # uint8 (N, C, H, W)
    train_y: Tensor  # int64 (N,)
    test_x: Tensor
    test_y: Tensor


DATASETS: Registry[DatasetSpec] = Registry("dataset", ("bench.data.sources",), "binbench.datasets")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS.add(spec.name, spec)
    return spec


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


def get_dataset(name: str) -> DatasetSpec:
    return DATASETS.get(name)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "binbench"


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """--data-root, else $BINBENCH_DATA, else ~/.cache/binbench/data."""
    if data_root:
        return Path(data_root).expanduser().resolve()
    env = os.environ.get("BINBENCH_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return cache_dir() / "data"


def load_dataset(name: str, data_root: str | os.PathLike | None = None, download: bool = False) -> DatasetTensors:
    spec = get_dataset(name)
    return spec.loader(resolve_data_root(data_root), download=download)


def dataset_tensor_bytes(d: DatasetTensors) -> int:
    return sum(t.numel() * t.element_size() for t in (d.train_x, d.train_y, d.test_x, d.test_y))


__all__ = ["DATASETS", "DatasetSpec", "DatasetTensors", "get_dataset", "list_datasets", "load_dataset",
           "register_dataset", "resolve_data_root"]
