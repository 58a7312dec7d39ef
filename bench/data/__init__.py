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
    loader: Callable[..., DatasetTensors] | None  # None: streamed from disk (``streaming``), never loaded whole
    streaming: bool = False
    # other places under the data root its files may live (CIFAR-10's JPEG copy), for checks before a run
    alt_folders: tuple[str, ...] = ()
    # (source, digest) of what the loader would read, without decoding it; see dataset_source
    identify: Callable[[Path], tuple[str, str]] | None = None
    # images in the training and test splits (0: unknown), for cost estimates and table headers
    train_images: int = 0
    test_images: int = 0

    def present(self, root: Path) -> bool:
        """Whether the data root holds something the loader reads (a cheap existence check, not a load)."""
        if not self.folder:
            return True
        folders = (self.folder, self.folder.replace("/raw", ""), *self.alt_folders)
        return any((Path(root) / f).exists() for f in folders)


@dataclass
class DatasetTensors:
    train_x: Tensor  # uint8 (N, C, H, W)
    train_y: Tensor  # int64 (N,)
    test_x: Tensor
    test_y: Tensor
    # what was read, for run records and tables: e.g. "torchvision CIFAR-10 batches", "CIFAR-10 (JPEG copy)"
    source: str = ""
    # digest of the files read ("sha256:", "sha256-list:", "stat-sha256:"; see bench.data.imagefolder), "" if none
    digest: str = ""
    # the file or folder it was read from ("" for embedded data)
    origin: str = ""


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


#: datasets kept in this process's memory, newest last; None: every load reads and decodes again (one run per
#: process). Long-lived suite workers turn it on, so trials on the same data decode it once per worker.
_IN_MEMORY: dict[tuple[str, str], DatasetTensors] | None = None
_IN_MEMORY_MAX = 2  # a suite's trials mostly share one or two datasets; more would hold gigabytes for nothing


def keep_in_memory(on: bool = True) -> None:
    """Keep loaded datasets in this process for later loads (the trials only read the tensors, never write)."""
    global _IN_MEMORY
    _IN_MEMORY = {} if on else None


def load_dataset(name: str, data_root: str | os.PathLike | None = None, download: bool = False) -> DatasetTensors:
    spec = get_dataset(name)
    if spec.loader is None:
        from bench.errors import BinbenchError

        raise BinbenchError(f"{name} is streamed from disk, not loaded whole: train on it with binbench run / train()")
    root = resolve_data_root(data_root)
    key = (spec.name, str(root))
    if _IN_MEMORY is not None and key in _IN_MEMORY:
        _IN_MEMORY[key] = _IN_MEMORY.pop(key)  # most recently used last
        return _IN_MEMORY[key]
    data = spec.loader(root, download=download)
    if not data.source:  # a plugin's loader that does not say: at least name the dataset
        data.source = spec.name
    if _IN_MEMORY is not None:
        while len(_IN_MEMORY) >= _IN_MEMORY_MAX:
            _IN_MEMORY.pop(next(iter(_IN_MEMORY)))
        _IN_MEMORY[key] = data
    return data


def dataset_source(name: str, data_root: str | os.PathLike | None = None) -> tuple[str, str]:
    """(source, digest) of what ``load_dataset(name, data_root)`` would read, without decoding it.

    Costs a hash of the dataset's files (well under a second for MNIST, CIFAR and the CIFAR-10 archive) or a
    stat of every file of an image folder; ImageNet gives no digest. Raises DataNotFoundError as a load would.
    """
    spec = get_dataset(name)
    if spec.identify is None:
        return spec.name, ""
    return spec.identify(resolve_data_root(data_root))


__all__ = ["DATASETS", "DatasetSpec", "DatasetTensors", "dataset_source", "get_dataset", "keep_in_memory",
           "list_datasets", "load_dataset", "register_dataset", "resolve_data_root"]
