"""CIFAR-10 from an image-folder copy (``train/<class>/*.jpg``, ``test/<class>/*.jpg``) or a .tar.gz of one.

The data root is read-only and may be shared, so nothing is ever written next to the data: an archive is
extracted once into binbench's cache and every copy is decoded once into uint8 tensors that are saved there
too, so later loads read one file. Every cache entry is named by a digest of what it was made from (the
archive's sha256, or for a folder a sha256 over its files' relative paths, sizes and mtimes together with the
folder's resolved path, since stat cannot tell two same-looking copies apart), never by the folder's name
alone, so another data root cannot pick up a cache that belongs to different files.

Digests, as recorded in :class:`bench.data.DatasetTensors` (``digest``):

* ``sha256:<hex>``: the sha256 of one file (``sha256sum`` prints the same hex),
* ``sha256-list:<hex>``: the sha256 over ``relpath TAB sha256(file)`` lines of several files, sorted by path,
* ``stat-sha256:<hex>``: the sha256 over ``relpath TAB size TAB mtime_ns`` lines of a folder's files (reading
  60,000 small files on every load would cost more than the decode cache saves).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from bench.data import DatasetTensors, cache_dir
from bench.errors import BinbenchError, DataNotFoundError

#: torchvision's CIFAR10.classes, in label order
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: the label tables and run records use for pixels that are not the original CIFAR-10 bytes
JPEG_SOURCE = "CIFAR-10 (JPEG copy)"
#: where under a data root a JPEG copy is looked for, in this order (the second spelling is a common rename)
IMAGE_FOLDERS = ("CIFAR-10-images", "cifar10-images")
ARCHIVE_NAME = "cifar10-jpeg.tar.gz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# bump when the decoded tensors would change for the same files (decoder, sample order), so old caches go stale
_DECODE_VERSION = 1


# -- digests ----------------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_digest(paths: Iterable[Path], base: Path) -> str:
    """``sha256-list:`` digest of several files' contents, named relative to ``base``."""
    lines = sorted(f"{p.relative_to(base).as_posix()}\t{file_sha256(p)}\n" for p in paths)
    return "sha256-list:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def folder_digest(folder: Path, subfolders: Iterable[str] = ()) -> str:
    """``stat-sha256:`` digest over the relative paths, sizes and mtimes of every file under ``folder``
    (or only under the given subfolders of it)."""
    lines: list[str] = []
    tops = [folder / s for s in subfolders] or [folder]
    stack = [t for t in tops if t.is_dir()]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=True):
                    stack.append(Path(e.path))
                else:
                    st = e.stat(follow_symlinks=True)
                    rel = Path(e.path).relative_to(folder).as_posix()
                    lines.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n")
    lines.sort()
    return "stat-sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def _key(digest: str) -> str:
    """A short file-name-safe form of a digest: its kind ("sha256", "stat") and 16 hex digits."""
    kind, _, hexd = digest.partition(":")
    return f"{kind.split('-')[0]}-{hexd[:16]}"


# -- where the copy is --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageCopy:
    """A CIFAR-10 image-folder copy found under a data root."""

    kind: str  # "folder" or "archive"
    path: Path  # the folder holding train/ and test/, or the archive


def find_cifar10_images(root: Path) -> ImageCopy | None:
    """The first of ``<root>/{CIFAR-10-images,cifar10-images}/{train,test}/`` (a folder) or
    ``<root>/{CIFAR-10-images,cifar10-images}/cifar10-jpeg.tar.gz`` (an archive) that exists, else None.

    A folder wins over an archive next to it: it is what someone unpacked on purpose.
    """
    for name in IMAGE_FOLDERS:
        base = Path(root) / name
        if not base.is_dir():
            continue
        if (base / "train").is_dir() and (base / "test").is_dir():
            return ImageCopy("folder", base)
        if (base / ARCHIVE_NAME).is_file():
            return ImageCopy("archive", base / ARCHIVE_NAME)
        for split in ("train", "test"):
            if (base / split).is_dir():
                other = "test" if split == "train" else "train"
                raise DataNotFoundError(f"CIFAR-10 image folder {base} has {split}/ but no {other}/: copy both "
                                        f"splits there, or put {ARCHIVE_NAME} there instead")
    return None


def image_copy_digest(copy: ImageCopy) -> str:
    try:
        if copy.kind == "archive":
            return "sha256:" + file_sha256(copy.path)
        return folder_digest(copy.path, ("train", "test"))
    except OSError as exc:
        raise DataNotFoundError(f"cannot read the CIFAR-10 copy {copy.path} ({exc.strerror or exc}): make it "
                                "readable or point --data-root at another copy") from None


# -- extraction ---------------------------------------------------------------------------------------------
def _check_member(m: tarfile.TarInfo, archive: Path) -> None:
    """Refuse what could write outside the destination or is not plain data. Kept beside tarfile's
    ``filter="data"`` (which the extraction uses wherever Python has it), for three reasons: Python 3.10.0-3.10.11
    and 3.11.0-3.11.3, which binbench supports, lack the filter; the filter lets links inside the destination
    through, which an image-folder archive has no use for and a later load would follow; and this check's
    message names the member and what the archive should hold."""
    name = m.name
    parts = Path(name).parts
    bad = ""
    if name.startswith(("/", "\\")) or Path(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        bad = "an absolute path"
    elif ".." in parts:
        bad = "a '..' path"
    elif m.issym() or m.islnk():
        bad = "a link"
    elif not (m.isfile() or m.isdir()):
        bad = "a device, fifo or other special file"
    if bad:
        raise BinbenchError(f"refusing to extract {archive}: member {name!r} is {bad}; use an archive that holds "
                            "only train/<class>/*.jpg and test/<class>/*.jpg files")


def _split_root(folder: Path) -> Path | None:
    """The folder holding train/ and test/: the extraction root or its only subfolder."""
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir()]
    if len(subs) == 1 and (subs[0] / "train").is_dir() and (subs[0] / "test").is_dir():
        return subs[0]
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale(parent: Path, prefix: str) -> None:
    """Temporaries (``.<prefix>.<pid>.tmp``) that a killed process left behind."""
    if not parent.is_dir():
        return
    for p in parent.glob(f".{prefix}.*.tmp"):
        pid = p.name[len(prefix) + 2: -4]
        if pid.isdigit() and not _pid_alive(int(pid)):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def extract_archive(archive: Path, digest: str) -> Path:
    """Extract ``archive`` once into ``<cache>/extracted/cifar10-jpeg-<key>/`` and return the folder that
    holds train/ and test/. The extraction goes into a temporary folder renamed into place at the end, so a
    killed process leaves no half-extracted tree that a later load would trust."""
    parent = cache_dir() / "extracted"
    final = parent / f"cifar10-jpeg-{_key(digest)}"
    if final.is_dir():
        if (found := _split_root(final)) is not None:
            return found
        shutil.rmtree(final, ignore_errors=True)  # only validated trees are renamed in: someone edited this one
    prefix = f"cifar10-jpeg-{_key(digest)}"
    _remove_stale(parent, prefix)
    tmp = parent / f".{prefix}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        # tarfile's own "data" filter (3.12, backported to 3.11.4 / 3.10.12) on every member, after the check
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        try:
            tmp.mkdir(parents=True)
            # the whole gzip stream first: a cut archive must fail as one, whichever tar header the cut lands in
            with gzip.open(archive) as whole:
                while whole.read(1 << 22):
                    pass
            with tarfile.open(archive, "r|gz") as tar:  # one sequential pass: no seeking back in the gzip stream
                for m in tar:
                    _check_member(m, archive)
                    tar.extract(m, tmp, **kw)
        except getattr(tarfile, "FilterError", ()) as exc:  # what the data filter refused (a member it rewrote)
            raise BinbenchError(f"refusing to extract {archive}: {exc}; use an archive that holds only "
                                "train/<class>/*.jpg and test/<class>/*.jpg files") from None
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise BinbenchError(f"CIFAR-10 archive {archive} is truncated or corrupt ({exc}): replace it with a "
                                "complete copy (see the data folder's README for its md5)") from None
        except OSError as exc:
            raise BinbenchError(f"could not extract {archive} into {parent} ({exc}): free disk space there or point "
                                "XDG_CACHE_HOME at a writable folder with room") from None
        if _split_root(tmp) is None:
            raise DataNotFoundError(f"CIFAR-10 archive {archive} holds no train/ and test/ folders: use an archive "
                                    "laid out as train/<class>/*.jpg and test/<class>/*.jpg")
        try:
            os.replace(tmp, final)
        except OSError as exc:
            if not (final.is_dir() and _split_root(final) is not None):  # not a concurrent load that won the race
                raise BinbenchError(f"could not move the extracted {archive} into {final} ({exc}): free disk space "
                                    "there or point XDG_CACHE_HOME at a writable folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _split_root(final)
    assert found is not None
    return found


# -- decoding -----------------------------------------------------------------------------------------------
def scan_split(split_dir: Path) -> list[tuple[Path, int]]:
    """(path, label) of every image under ``split_dir/<class>/``, labels in torchvision's class order.

    Samples are interleaved across classes (the first image of every class, then the second, ...) rather
    than grouped by class, so a prefix of the split (``train_subset``) holds every class in equal shares,
    as a prefix of torchvision's shuffled batches nearly does.
    """
    names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if names != sorted(CIFAR10_CLASSES):
        missing = sorted(set(CIFAR10_CLASSES) - set(names))
        extra = sorted(set(names) - set(CIFAR10_CLASSES))
        what = "; ".join(s for s in (f"missing {', '.join(missing)}" if missing else "",
                                     f"unexpected {', '.join(extra)}" if extra else "") if s)
        raise DataNotFoundError(f"CIFAR-10 image folder {split_dir} has the wrong class folders ({what}): it must "
                                f"hold exactly {', '.join(CIFAR10_CLASSES)}")
    per_class: list[list[Path]] = []
    for c in CIFAR10_CLASSES:
        files = sorted(p for p in (split_dir / c).iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not files:
            raise DataNotFoundError(f"CIFAR-10 image folder {split_dir / c} holds no .jpg/.png images: copy the "
                                    "images of that class there")
        per_class.append(files)
    order = sorted((j, label) for label, files in enumerate(per_class) for j in range(len(files)))
    return [(per_class[label][j], label) for j, label in order]


def _torchvision_decoder():
    """torchvision.io.decode_image (libjpeg-turbo, 3-5x faster than PIL on 32x32 files), or None where it is
    missing; torchvision 0.29 deprecates it in favour of TorchCodec, so PIL stays the fallback."""
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return None
    return lambda data: decode_image(data, mode=ImageReadMode.RGB)


def _decode_pil(path: Path, size: int) -> np.ndarray:
    """PIL's decode, which also names what is wrong with a file the fast path refused."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.size != (size, size):
                raise BinbenchError(f"image {path} is {img.size[0]}x{img.size[1]}, not {size}x{size}: CIFAR-10 "
                                    "images must be 32x32; replace the copy with an unresized one")
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BinbenchError(f"image {path} cannot be decoded ({exc}): replace the CIFAR-10 copy with an intact "
                            "one") from None


def decode_images(samples: list[tuple[Path, int]], size: int = 32) -> tuple[Tensor, Tensor]:
    """Decode every image once into one uint8 (N, 3, size, size) tensor plus int64 labels."""
    fast = _torchvision_decoder()
    xs = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision.io warns on every call since 0.29
        for i, (path, _) in enumerate(samples):
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise BinbenchError(f"image {path} cannot be read ({exc.strerror or exc}): make the CIFAR-10 copy "
                                    "readable") from None
            img = None
            if fast is not None:
                try:
                    img = fast(torch.frombuffer(bytearray(data), dtype=torch.uint8))
                except Exception:  # corrupt, or a format it lacks: PIL decides and names the problem
                    img = None
            if img is None or tuple(img.shape) != (3, size, size):
                img = torch.from_numpy(np.ascontiguousarray(_decode_pil(path, size).transpose(2, 0, 1)))
            xs[i] = img
    ys = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return xs, ys


# -- the decoded-tensor cache -------------------------------------------------------------------------------
def tensor_cache_path(digest: str) -> Path:
    return cache_dir() / "tensors" / f"cifar10-jpeg-v{_DECODE_VERSION}-{_key(digest)}.pt"


def _read_cache(path: Path, digest: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable (another torch, a damaged disk): decode again and overwrite it
        return None
    if not isinstance(blob, dict) or blob.get("digest") != digest or blob.get("version") != _DECODE_VERSION:
        return None  # a 16-digit key collision or an old format: never trust it
    return blob


def _write_cache(path: Path, blob: dict) -> None:
    """torch.save to a temporary file, then os.replace: readers see the whole file or none."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path.parent, path.name)
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except OSError as exc:  # a full or read-only cache costs the next load a decode, not this run
        warnings.warn(f"binbench: could not write the decoded CIFAR-10 cache {path} ({exc}); the next load decodes "
                      "again", stacklevel=3)
    finally:
        tmp.unlink(missing_ok=True)


def load_cifar10_images(copy: ImageCopy) -> DatasetTensors:
    """CIFAR-10 from an image-folder copy or its archive, decoded once and cached by content digest."""
    digest = image_copy_digest(copy)
    # a folder's digest is of paths, sizes and mtimes, not bytes: its cache entry is also tied to the folder, so
    # another copy that merely looks the same to stat (cp -p, then an edit that keeps size and mtime) is decoded
    # on its own
    ident = digest if copy.kind == "archive" else f"{digest}@{copy.path.resolve()}"
    cache = tensor_cache_path(ident if copy.kind == "archive" else
                              "stat-sha256:" + hashlib.sha256(ident.encode()).hexdigest())
    blob = _read_cache(cache, ident)
    if blob is None:
        folder = extract_archive(copy.path, digest) if copy.kind == "archive" else copy.path
        try:
            (xtr, ytr), (xte, yte) = (decode_images(scan_split(folder / s)) for s in ("train", "test"))
        except BinbenchError:
            if copy.kind == "archive":  # the extraction of an archive with a bad image is of no later use
                shutil.rmtree(cache_dir() / "extracted" / f"cifar10-jpeg-{_key(digest)}", ignore_errors=True)
            raise
        blob = {"version": _DECODE_VERSION, "digest": ident, "classes": list(CIFAR10_CLASSES),
                "train_x": xtr, "train_y": ytr, "test_x": xte, "test_y": yte}
        _write_cache(cache, blob)
    return DatasetTensors(blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"], source=JPEG_SOURCE,
                          digest=digest, origin=str(copy.path))
