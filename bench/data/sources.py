"""The built-in datasets, each read by torchvision's own classes (or ImageFolder) from a data root."""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.data import IMAGENET_MEAN, IMAGENET_STD, DatasetSpec, DatasetTensors, cache_dir, register_dataset
from bench.errors import DataNotFoundError


def _missing(name: str, where: Path, how: str) -> DataNotFoundError:
    return DataNotFoundError(f"dataset {name!r} not found in {where}: {how}")


# -- digits: embedded, never downloaded -----------------------------------------------------------------
def _load_digits(root: Path, download: bool = False) -> DatasetTensors:
    from sklearn.datasets import load_digits  # ships its data file inside the package
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8), 0..16 -> 0..255
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)  # fixed split
    return DatasetTensors(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte))


# -- MNIST / Fashion-MNIST --------------------------------------------------------------------------------
def _mnist_like(cls_name: str, folder: str, name: str, how: str):
    def load(root: Path, download: bool = False) -> DatasetTensors:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        # torchvision reads <root>/<folder>/raw/*-ubyte; archives (*.gz) in a read-only root are extracted
        # into binbench's cache once, so a shared read-only data folder works as is.
        use_root = root
        raw = root / folder / "raw"
        files = [Path(u[0] if isinstance(u, tuple) else u).name for u in cls.resources]
        plain = [raw / f.removesuffix(".gz") for f in files]
        if not all(p.exists() for p in plain):
            gz = [raw / f for f in files]
            if all(p.exists() for p in gz):
                use_root = cache_dir() / "extracted"
                dest = use_root / folder / "raw"
                dest.mkdir(parents=True, exist_ok=True)
                for src in gz:
                    out = dest / src.name.removesuffix(".gz")
                    if not out.exists():
                        tmp = out.with_suffix(".tmp")
                        with gzip.open(src, "rb") as fi, open(tmp, "wb") as fo:
                            shutil.copyfileobj(fi, fo)
                        tmp.replace(out)
            elif not download:
                raise _missing(name, raw, how)
        try:
            train = cls(str(use_root), train=True, download=download)
            test = cls(str(use_root), train=False, download=download)
        except RuntimeError as exc:
            raise _missing(name, raw, how) from exc
        return DatasetTensors(train.data[:, None].contiguous(), train.targets.long(), test.data[:, None].contiguous(),
                              test.targets.long())

    return load


# -- CIFAR-10/100 -----------------------------------------------------------------------------------------
def _cifar(cls_name: str, name: str, how: str):
    def load(root: Path, download: bool = False) -> DatasetTensors:
        import torchvision.datasets as tvd

        base = getattr(tvd, cls_name)

        class Cifar(base):  # type: ignore[misc, valid-type]
            # torchvision verifies md5s of the full archives; files in the same format but another size
            # (subsets, test fixtures) are accepted when present. Downloads still verify.
            def _check_integrity(self) -> bool:
                folder = Path(self.root) / self.base_folder
                return all((folder / f).exists() for f, _ in self.train_list + self.test_list)

            def _load_meta(self) -> None:
                path = Path(self.root) / self.base_folder / self.meta["filename"]
                if not path.exists():
                    raise RuntimeError(f"{path} missing")
                with open(path, "rb") as fh:
                    self.classes = pickle.load(fh, encoding="latin1")[self.meta["key"]]
                self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        folder = Path(root) / base.base_folder
        try:
            train = Cifar(str(root), train=True, download=download)
            test = Cifar(str(root), train=False, download=download)
        except RuntimeError as exc:
            raise _missing(name, folder, how) from exc

        def to_t(ds) -> tuple[Tensor, Tensor]:
            x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
            return x, torch.tensor(ds.targets, dtype=torch.int64)

        (xtr, ytr), (xte, yte) = to_t(train), to_t(test)
        return DatasetTensors(xtr, ytr, xte, yte)

    return load


# -- Tiny-ImageNet ---------------------------------------------------------------------------------------
def _decode_folder(samples: list[tuple[str, int]], size: int) -> tuple[Tensor, Tensor]:
    """Decode every image once (PIL, as ImageFolder does) into one uint8 tensor."""
    from PIL import Image

    xs = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(samples):
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            xs[i] = np.asarray(img)
    ys = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return torch.from_numpy(xs).permute(0, 3, 1, 2).contiguous(), ys


def _load_tiny_imagenet(root: Path, download: bool = False) -> DatasetTensors:
    from torchvision.datasets import ImageFolder

    base = Path(root) / "tiny-imagenet-200"
    how = TINY_HOW
    if not (base / "train").is_dir() or not (base / "val" / "val_annotations.txt").exists():
        raise _missing("tiny-imagenet", base, how)
    train = ImageFolder(str(base / "train"))  # train/<wnid>/images/*.JPEG
    classes = train.class_to_idx
    val = []
    for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in classes:
            val.append((str(base / "val" / "images" / parts[0]), classes[parts[1]]))
    xtr, ytr = _decode_folder(train.samples, 64)
    xte, yte = _decode_folder(val, 64)
    return DatasetTensors(xtr, ytr, xte, yte)


def _load_imagenet(root: Path, download: bool = False) -> DatasetTensors:  # streams: see stream.py
    base = Path(root) / "imagenet"
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise _missing("imagenet", base, IMAGENET_HOW)
    # never decoded into memory: train() streams it through bench.data.stream.imagenet_loaders
    from bench.errors import BinbenchError

    raise BinbenchError("imagenet is streamed from disk, not loaded whole: train on it with binbench run / train()")


MNIST_HOW = "copy the 4 MNIST idx files (.gz or plain) into <data root>/MNIST/raw/, pass --download on a " \
            "machine with internet, or point --data-root / BINBENCH_DATA at a folder holding MNIST/raw/"
TINY_HOW = ("unpack tiny-imagenet-200.zip (train/<wnid>/images, val/images, val/val_annotations.txt) into the data "
            "root (--data-root or BINBENCH_DATA)")
IMAGENET_HOW = ("arrange ILSVRC-2012 as imagenet/train/<wnid>/*.JPEG and imagenet/val/<wnid>/*.JPEG under the "
                "data root (--data-root or BINBENCH_DATA)")


def _how(name: str, folder: str) -> str:
    return (f"pass --download on a machine with internet, or point --data-root / BINBENCH_DATA at a folder "
            f"holding {folder}/")


register_dataset(DatasetSpec("digits", 10, (1, 8, 8), (0.3,), (0.36,), "none", 20, 64, "", "embedded",
                             _load_digits))
register_dataset(DatasetSpec("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), "none", 20, 128, "MNIST/raw",
                             MNIST_HOW, _mnist_like("MNIST", "MNIST", "mnist", MNIST_HOW)))
_FASHION_HOW = MNIST_HOW.replace("MNIST", "FashionMNIST")
register_dataset(DatasetSpec("fashion-mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), "none", 20, 128,
                             "FashionMNIST/raw", _FASHION_HOW,
                             _mnist_like("FashionMNIST", "FashionMNIST", "fashion-mnist", _FASHION_HOW)))
register_dataset(DatasetSpec("cifar10", 10, (3, 32, 32), IMAGENET_MEAN, IMAGENET_STD, "crop_flip", 600, 256,
                             "cifar-10-batches-py", _how("cifar10", "cifar-10-batches-py"),
                             _cifar("CIFAR10", "cifar10", _how("cifar10", "cifar-10-batches-py"))))
register_dataset(DatasetSpec("cifar100", 100, (3, 32, 32), IMAGENET_MEAN, IMAGENET_STD, "crop_flip", 500, 256,
                             "cifar-100-python", _how("cifar100", "cifar-100-python"),
                             _cifar("CIFAR100", "cifar100", _how("cifar100", "cifar-100-python"))))
register_dataset(DatasetSpec("tiny-imagenet", 200, (3, 64, 64), IMAGENET_MEAN, IMAGENET_STD, "resized_crop_flip",
                             500, 256, "tiny-imagenet-200", TINY_HOW, _load_tiny_imagenet))
register_dataset(DatasetSpec("imagenet", 1000, (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, "resized_crop_flip", 200,
                             256, "imagenet", IMAGENET_HOW, _load_imagenet, streaming=True))
