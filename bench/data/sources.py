"""The built-in datasets, each read by torchvision's own classes (or ImageFolder) from a data root.

CIFAR-10 also reads a JPEG image-folder copy (or its .tar.gz) when torchvision's batches are absent; see
:mod:`bench.data.imagefolder`. Every loader records what it read in DatasetTensors.source / .digest.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.data import IMAGENET_MEAN, IMAGENET_STD, DatasetSpec, DatasetTensors, cache_dir, register_dataset
from bench.data.imagefolder import (
    ARCHIVE_NAME,
    IMAGE_FOLDERS,
    JPEG_SOURCE,
    file_sha256,
    files_digest,
    find_cifar10_images,
    folder_digest,
    image_copy_digest,
    load_cifar10_images,
)
from bench.errors import BinbenchError, DataCorruptError, DataNotFoundError


def _missing(name: str, where: Path, how: str) -> DataNotFoundError:
    return DataNotFoundError(f"dataset {name!r} not found in {where}: {how}")


# -- digits: embedded, never downloaded -----------------------------------------------------------------
DIGITS_SOURCE = "scikit-learn digits (embedded)"


def _digits_file() -> Path:
    import importlib.util

    # found without importing scikit-learn (seconds): a driver that only checks the data never loads it
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return Path("sklearn-is-not-installed")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


def _identify_digits(root: Path) -> tuple[str, str]:
    f = _digits_file()
    return DIGITS_SOURCE, ("sha256:" + file_sha256(f)) if f.is_file() else ""


def _load_digits(root: Path, download: bool = False) -> DatasetTensors:
    from sklearn.datasets import load_digits  # ships its data file inside the package
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8), 0..16 -> 0..255
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)  # fixed split
    source, digest = _identify_digits(root)
    return DatasetTensors(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte),
                          source=source, digest=digest, origin=str(_digits_file()))


# -- MNIST / Fashion-MNIST --------------------------------------------------------------------------------
def _mnist_files(cls_name: str, folder: str, root: Path) -> tuple[list[Path], list[Path]]:
    """torchvision's plain idx files and their .gz archives under <root>/<folder>/raw."""
    import torchvision.datasets as tvd

    raw = root / folder / "raw"
    files = [Path(u[0] if isinstance(u, tuple) else u).name for u in getattr(tvd, cls_name).resources]
    return [raw / f.removesuffix(".gz") for f in files], [raw / f for f in files]


def mnist_archives(root: Path, cls_name: str = "MNIST", folder: str = "MNIST") -> tuple[list[Path], str]:
    """The ``.gz`` archives of an MNIST-style dataset under ``root`` and their content digest."""
    _plain, gz = _mnist_files(cls_name, folder, root)
    missing = [p for p in gz if not p.exists()]
    if missing:
        raise _missing(folder, missing[0].parent, f"{missing[0].name} is missing")
    return gz, files_digest(gz, root / folder)


def extract_archives(gz: list[Path], folder: str, digest: str) -> Path:
    """Extract MNIST-style ``.gz`` archives into binbench's cache, in torchvision's layout, once.

    The folder is named by the archives' content digest, so another data root's (different) archives get a
    folder of their own and can never be read in place of these; several processes extracting at once (two
    trials starting together) each write a uniquely named temporary and rename it into place atomically, so
    a reader sees a complete file or none. Returns the root to hand to torchvision.
    """
    use_root = cache_dir() / "extracted" / digest.rpartition(":")[2][:16]
    dest = use_root / folder / "raw"
    dest.mkdir(parents=True, exist_ok=True)
    for src in gz:
        out = dest / src.name.removesuffix(".gz")
        if out.exists():
            continue
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=dest)  # unique per writer
        tmp = Path(name)
        try:
            with gzip.open(src, "rb") as fi, os.fdopen(fd, "wb") as fo:
                shutil.copyfileobj(fi, fo)
        except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a damaged deflate stream
            tmp.unlink(missing_ok=True)
            msg = f"{src} is not a readable gzip archive ({exc}): replace it with an intact copy"
            raise DataCorruptError(msg) from exc
        os.replace(tmp, out)
    return use_root


def _mnist_like(cls_name: str, folder: str, name: str, how: str, source: str):
    def identify(root: Path) -> tuple[str, str]:
        plain, gz = _mnist_files(cls_name, folder, root)
        for files in (plain, gz):  # what load() reads: the plain files if all are there, else the archives
            if all(p.exists() for p in files):
                return source, files_digest(files, root / folder)
        raise _missing(name, root / folder / "raw", how)

    def load(root: Path, download: bool = False) -> DatasetTensors:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        raw = root / folder / "raw"
        plain, gz = _mnist_files(cls_name, folder, root)
        have = all(p.exists() for p in plain) or all(p.exists() for p in gz)
        if not have and not download:
            raise _missing(name, raw, how)
        use_root, digest = root, ""
        if all(p.exists() for p in plain):
            digest = files_digest(plain, root / folder)
        elif have:
            digest = files_digest(gz, root / folder)
            use_root = extract_archives(gz, folder, digest)
        try:
            train = cls(str(use_root), train=True, download=download and not have)
            test = cls(str(use_root), train=False, download=download and not have)
        except Exception as exc:  # noqa: BLE001 - torchvision's parser asserts, raises RuntimeError, ValueError
            if not have:
                raise _missing(name, raw, how) from exc
            raise BinbenchError(f"the {name} files in {raw} are damaged or not idx files ({type(exc).__name__}): "
                                f"replace them with intact copies ({how})") from None
        if not digest and all(p.exists() for p in _mnist_files(cls_name, folder, use_root)[0]):  # just downloaded
            digest = files_digest(_mnist_files(cls_name, folder, use_root)[0], use_root / folder)
        return DatasetTensors(train.data[:, None].contiguous(), train.targets.long(), test.data[:, None].contiguous(),
                              test.targets.long(), source=source, digest=digest, origin=str(raw))

    return identify, load


# -- CIFAR-10/100 -----------------------------------------------------------------------------------------
def _cifar_files(cls_name: str, root: Path) -> tuple[Path, list[Path]]:
    import torchvision.datasets as tvd

    base = getattr(tvd, cls_name)
    folder = Path(root) / base.base_folder
    names = [f for f, _ in base.train_list + base.test_list] + [base.meta["filename"]]
    return folder, [folder / f for f in names]


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR batch file names: numpy's array reconstruction and dtype, under the module
    names numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) pickle them with."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    out: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        out[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        out[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return out


def _latin1_encode(obj: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2 (``encode(str, 'latin1')``), and nothing else."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("it calls _codecs.encode with arguments a CIFAR batch never holds")
    return obj.encode("latin1", errors)


class _Refused(pickle.UnpicklingError):
    """A global that a CIFAR batch never names."""


_SAFE_BUILTINS = {"bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list", "set", "str", "tuple"}


class CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickled batches, admitting only the globals a real batch names (numpy arrays, builtin
    containers and numbers): a crafted file that names anything else (``os.system``, ``eval`` ...) is refused
    before anything of it runs."""

    _numpy = None

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's hook
        if CifarUnpickler._numpy is None:
            CifarUnpickler._numpy = _numpy_globals()
        found = CifarUnpickler._numpy.get((module, name))
        if found is not None:
            return found
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            import builtins

            return getattr(builtins, name)
        raise _Refused(f"it names {module}.{name}, which a CIFAR batch never holds")


def read_cifar_batch(path: Path) -> dict:
    """One CIFAR batch or meta file, through :class:`CifarUnpickler`; a BinbenchError of one line when the file
    is damaged or holds anything a real batch does not."""
    try:
        with open(path, "rb") as fh:
            out = CifarUnpickler(fh, encoding="latin1").load()
    except _Refused as exc:
        raise BinbenchError(f"refusing to load {path}: {exc}; nothing in it was run. Replace the folder with "
                            "torchvision's original batches (or pass --download)") from None
    except OSError as exc:
        raise BinbenchError(f"cannot read {path} ({exc.strerror or exc}): make it readable") from None
    except Exception as exc:  # noqa: BLE001 - truncated or garbage bytes fail in many ways inside pickle
        raise BinbenchError(f"{path} is damaged or not a CIFAR batch ({type(exc).__name__}): replace the folder "
                            "with torchvision's original batches (or pass --download)") from None
    if not isinstance(out, dict):
        raise BinbenchError(f"{path} is not a CIFAR batch (it holds a {type(out).__name__}, not a dict): replace "
                            "the folder with torchvision's original batches")
    return out


def _batch_arrays(path: Path, num_classes: int) -> tuple[np.ndarray, list[int]]:
    entry = read_cifar_batch(path)
    data = entry.get("data")
    labels = entry.get("labels", entry.get("fine_labels"))
    bad = ""
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        bad = "its 'data' is not a uint8 array of 3072 values per image"
    elif not isinstance(labels, list) or len(labels) != data.shape[0]:
        bad = "its labels are not a list with one label per image"
    elif not all(isinstance(v, int) and 0 <= v < num_classes for v in labels):
        bad = f"its labels are not integers in 0..{num_classes - 1}"
    if bad:
        raise BinbenchError(f"{path} is not a CIFAR batch ({bad}): replace the folder with torchvision's original "
                            "batches")
    return data, labels


def _cifar(cls_name: str, name: str, how: str, source: str):
    def identify(root: Path) -> tuple[str, str]:
        folder, files = _cifar_files(cls_name, root)
        if not all(f.is_file() for f in files):
            raise _missing(name, folder, how)
        return source, files_digest(files, folder)

    def load(root: Path, download: bool = False) -> DatasetTensors:
        """torchvision's batch files, read by :class:`CifarUnpickler` (never by plain pickle: a batch folder
        is data, and may come from anywhere). Files of the real format but another size (subsets, test
        fixtures) load too; torchvision's md5s are checked only when it downloads."""
        import torchvision.datasets as tvd

        base = getattr(tvd, cls_name)
        folder, files = _cifar_files(cls_name, root)
        if not all(f.is_file() for f in files):
            if not download:
                raise _missing(name, folder, how)
            try:  # downloads, verifies the archive's md5 and extracts; the files are read below as any others
                base(str(root), train=True, download=True)
            except RuntimeError as exc:
                raise _missing(name, folder, how) from exc
        num_classes = 10 if cls_name == "CIFAR10" else 100
        meta = read_cifar_batch(folder / base.meta["filename"])
        if not isinstance(meta.get(base.meta["key"]), list):
            raise BinbenchError(f"{folder / base.meta['filename']} is not CIFAR's meta file (no "
                                f"{base.meta['key']!r} list): replace the folder with torchvision's original batches")

        def split(names) -> tuple[Tensor, Tensor]:
            parts = [_batch_arrays(folder / f, num_classes) for f, _ in names]
            x = np.vstack([d for d, _ in parts]).reshape(-1, 3, 32, 32)
            return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor([v for _, ls in parts for v in ls],
                                                                           dtype=torch.int64)

        (xtr, ytr), (xte, yte) = split(base.train_list), split(base.test_list)
        return DatasetTensors(xtr, ytr, xte, yte, source=source, digest=identify(root)[1], origin=str(folder))

    return identify, load


CIFAR10_SOURCE = "torchvision CIFAR-10 batches"
CIFAR100_SOURCE = "torchvision CIFAR-100 batches"
CIFAR10_HOW = (f"put torchvision's cifar-10-batches-py/ in the data root, or a JPEG copy as <data root>/"
               f"CIFAR-10-images/{ARCHIVE_NAME} or <data root>/CIFAR-10-images/{{train,test}}/<class>/*.jpg; pass "
               "--download on a machine with internet, or point --data-root / BINBENCH_DATA at a folder holding one "
               "of these")
_identify_cifar10_batches, _load_cifar10_batches = _cifar("CIFAR10", "cifar10", CIFAR10_HOW, CIFAR10_SOURCE)


def _cifar10_choice(root: Path) -> str:
    """Which copy load() reads: torchvision's batches (the original bytes) whenever their folder exists,
    else a JPEG copy, else the batches again (missing: the error, or --download, comes from there)."""
    if (Path(root) / "cifar-10-batches-py").exists():
        return "batches"
    return "images" if find_cifar10_images(root) is not None else "batches"


def _identify_cifar10(root: Path) -> tuple[str, str]:
    if _cifar10_choice(root) == "images":
        copy = find_cifar10_images(root)
        assert copy is not None
        return JPEG_SOURCE, image_copy_digest(copy)
    return _identify_cifar10_batches(root)


def _load_cifar10(root: Path, download: bool = False) -> DatasetTensors:
    if _cifar10_choice(root) == "images":
        copy = find_cifar10_images(root)
        assert copy is not None
        return load_cifar10_images(copy)
    return _load_cifar10_batches(root, download=download)


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
    return DatasetTensors(xtr, ytr, xte, yte, source=TINY_SOURCE, digest=_identify_tiny(root)[1], origin=str(base))


TINY_SOURCE = "Tiny-ImageNet-200 folder"
IMAGENET_SOURCE = "ImageNet ILSVRC-2012 folder"


def _identify_tiny(root: Path) -> tuple[str, str]:
    base = Path(root) / "tiny-imagenet-200"
    if not (base / "train").is_dir():
        raise _missing("tiny-imagenet", base, TINY_HOW)
    return TINY_SOURCE, folder_digest(base, ("train", "val"))


def _identify_imagenet(root: Path) -> tuple[str, str]:
    base = Path(root) / "imagenet"
    if not (base / "train").is_dir() or not (base / "val").is_dir():
        raise _missing("imagenet", base, IMAGENET_HOW)
    return IMAGENET_SOURCE, ""  # a stat of 1.3 million files on every run costs more than it tells


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
                             _load_digits, identify=_identify_digits, train_images=1437, test_images=360))
_id_mnist, _load_mnist = _mnist_like("MNIST", "MNIST", "mnist", MNIST_HOW, "MNIST idx files")
register_dataset(DatasetSpec("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), "none", 20, 128, "MNIST/raw",
                             MNIST_HOW, _load_mnist, identify=_id_mnist, train_images=60000, test_images=10000))
_FASHION_HOW = MNIST_HOW.replace("MNIST", "FashionMNIST")
_id_fashion, _load_fashion = _mnist_like("FashionMNIST", "FashionMNIST", "fashion-mnist", _FASHION_HOW,
                                         "Fashion-MNIST idx files")
register_dataset(DatasetSpec("fashion-mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), "none", 20, 128,
                             "FashionMNIST/raw", _FASHION_HOW, _load_fashion, identify=_id_fashion, train_images=60000,
                             test_images=10000))
register_dataset(DatasetSpec("cifar10", 10, (3, 32, 32), IMAGENET_MEAN, IMAGENET_STD, "crop_flip", 600, 256,
                             "cifar-10-batches-py", CIFAR10_HOW, _load_cifar10, alt_folders=IMAGE_FOLDERS,
                             identify=_identify_cifar10, train_images=50000, test_images=10000))
_id_cifar100, _load_cifar100 = _cifar("CIFAR100", "cifar100", _how("cifar100", "cifar-100-python"), CIFAR100_SOURCE)
register_dataset(DatasetSpec("cifar100", 100, (3, 32, 32), IMAGENET_MEAN, IMAGENET_STD, "crop_flip", 500, 256,
                             "cifar-100-python", _how("cifar100", "cifar-100-python"), _load_cifar100,
                             identify=_id_cifar100, train_images=50000, test_images=10000))
register_dataset(DatasetSpec("tiny-imagenet", 200, (3, 64, 64), IMAGENET_MEAN, IMAGENET_STD, "resized_crop_flip",
                             500, 256, "tiny-imagenet-200", TINY_HOW, _load_tiny_imagenet, identify=_identify_tiny,
                             train_images=100000, test_images=10000))
register_dataset(DatasetSpec("imagenet", 1000, (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, "resized_crop_flip", 200,
                             256, "imagenet", IMAGENET_HOW, None, streaming=True,
                             identify=_identify_imagenet, train_images=1281167, test_images=50000))
