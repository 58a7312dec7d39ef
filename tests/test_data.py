"""Dataset loaders read the real on-disk formats (written here, tiny), and missing data is a clear error."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import get_dataset, load_dataset, resolve_data_root
from bench.data.loader import ResidentLoader, random_crop_flip
from bench.errors import DataNotFoundError

from .conftest import needs_mnist, shared_data


def _write_cifar(root: Path, folder: str, files: list[str], meta: str, label_key: str, n: int, classes: int):
    d = root / folder
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in files:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, n).tolist()
        with open(d / f, "wb") as fh:
            pickle.dump({"batch_label": f, label_key: labels, "data": data}, fh, protocol=2)
    with open(d / meta, "wb") as fh:
        key = "label_names" if classes == 10 else "fine_label_names"
        pickle.dump({key: [f"c{i}" for i in range(classes)]}, fh)


def test_cifar10_real_format(tmp_path):
    _write_cifar(tmp_path, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                 "batches.meta", "labels", 4, 10)
    d = load_dataset("cifar10", tmp_path)
    assert d.train_x.shape == (20, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (4, 3, 32, 32) and d.train_y.dtype == torch.int64


def test_cifar100_real_format(tmp_path):
    _write_cifar(tmp_path, "cifar-100-python", ["train", "test"], "meta", "fine_labels", 6, 100)
    d = load_dataset("cifar100", tmp_path)
    assert d.train_x.shape == (6, 3, 32, 32) and int(d.train_y.max()) < 100


def _jpeg(path: Path, size: int, seed: int):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format="JPEG")


def test_tiny_imagenet_real_layout(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    (base).mkdir()
    (base / "wnids.txt").write_text("\n".join(wnids))
    lines = []
    for i, w in enumerate(wnids):
        for j in range(2):
            _jpeg(base / "train" / w / "images" / f"{w}_{j}.JPEG", 64, i * 10 + j)
        _jpeg(base / "val" / "images" / f"val_{i}.JPEG", 64, 100 + i)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines))
    d = load_dataset("tiny-imagenet", tmp_path)
    assert d.train_x.shape == (4, 3, 64, 64) and d.test_y.tolist() == [0, 1]


def test_imagenet_folder_layout(tmp_path):
    from bench.data.stream import imagenet_loaders

    for split in ("train", "val"):
        for i, w in enumerate(["n01440764", "n01443537"]):
            _jpeg(tmp_path / "imagenet" / split / w / f"{split}_{i}.JPEG", 80, i)
    train, val = imagenet_loaders(tmp_path, batch_size=2, eval_batch_size=2, device=torch.device("cpu"), workers=0,
                                  image_size=64)
    xb, yb = next(iter(train.batches(seed=0)))
    assert xb.shape == (2, 3, 64, 64) and xb.dtype == torch.float32
    assert len(list(val.batches())) == 1


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "tiny-imagenet", "imagenet", "mnist", "fashion-mnist"])
def test_missing_dataset_names_folder_and_fix(tmp_path, name):
    with pytest.raises(DataNotFoundError) as exc:
        if name == "imagenet":
            from bench.data.stream import imagenet_loaders

            imagenet_loaders(tmp_path, 2, 2, torch.device("cpu"))
        else:
            load_dataset(name, tmp_path)
    msg = str(exc.value)
    assert str(tmp_path) in msg and ("--data-root" in msg or "--download" in msg)
    assert "\n" not in msg


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("BINBENCH_DATA", str(tmp_path))
    assert resolve_data_root(None) == tmp_path.resolve()
    assert resolve_data_root(tmp_path / "x") == (tmp_path / "x").resolve()
    monkeypatch.delenv("BINBENCH_DATA")
    assert resolve_data_root(None).name == "data"


def test_digits_embedded_fixed_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape == (1437, 1, 8, 8) and a.test_x.shape == (360, 1, 8, 8)
    assert torch.equal(a.test_y, b.test_y) and torch.equal(a.train_x, b.train_x)
    assert torch.bincount(a.test_y).min() >= 35  # stratified


@needs_mnist
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_from_shared_archives(name):
    d = load_dataset(name, shared_data())
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert sorted(torch.unique(d.test_y).tolist()) == list(range(10))


def test_crop_flip_matches_per_image_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    out = random_crop_flip(x, 1, g)
    g2 = torch.Generator().manual_seed(3)
    offs = torch.randint(0, 3, (2, 2), generator=g2)
    flip = torch.rand(2, generator=g2) < 0.5
    for i in range(2):
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
        ref = padded[:, offs[0, i]: offs[0, i] + 4, offs[1, i]: offs[1, i] + 4]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def test_loader_normalises_and_covers_epoch():
    spec = get_dataset("digits")
    d = load_dataset("digits")
    loader = ResidentLoader(d.train_x, d.train_y, spec, 100, torch.device("cpu"), train=True)
    seen = torch.cat([yb for _, yb in loader.batches(0, 0, 0)])
    assert torch.equal(seen.sort().values, d.train_y.sort().values)
    xb, _ = next(iter(ResidentLoader(d.test_x, d.test_y, spec, 360, torch.device("cpu"), train=False).batches()))
    ref = (d.test_x.float() / 255 - spec.mean[0]) / spec.std[0]
    assert torch.allclose(xb, ref, atol=1e-5)


# -- CIFAR-10 from a JPEG image-folder copy -----------------------------------------------------------------
JPEG_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _colour(label: int, j: int, seed: int) -> tuple[int, int, int]:
    # a flat colour per image survives JPEG almost exactly, so a decoded pixel tells which folder it came from
    return (label * 25, (j * 60 + seed * 7) % 256, 128)


def _image_folder(base: Path, train: int = 2, test: int = 1, seed: int = 0,
                  classes: tuple[str, ...] = JPEG_CLASSES) -> Path:
    from PIL import Image

    for split, n in (("train", train), ("test", test)):
        for label, c in enumerate(classes):
            (base / split / c).mkdir(parents=True, exist_ok=True)
            for j in range(n):
                Image.new("RGB", (32, 32), _colour(label, j, seed)).save(base / split / c / f"{j:04d}.jpg", "JPEG")
    return base


def _archive(root: Path, seed: int = 0, prefix: str = "", **kw) -> Path:
    import tarfile

    src = _image_folder(root.parent / f"src-{root.name}-{seed}", seed=seed, **kw)
    archive = root / "CIFAR-10-images" / "cifar10-jpeg.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(src / split, arcname=prefix + split)
    return archive


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    # binbench's cache (bench.data.cache_dir) follows XDG_CACHE_HOME: one per test, so tests see their own
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "binbench"


def _cache_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_cifar10_jpeg_folder_shapes_labels_class_order(tmp_path, cache):
    from bench.data import dataset_source

    root = tmp_path / "root"
    _image_folder(root / "CIFAR-10-images", train=2, test=1)
    d = load_dataset("cifar10", root)
    assert d.train_x.shape == (20, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (10, 3, 32, 32) and d.train_y.dtype == torch.int64 and d.test_y.dtype == torch.int64
    # interleaved across classes, so any prefix (train_subset) is balanced
    assert d.train_y.tolist() == list(range(10)) * 2 and d.test_y.tolist() == list(range(10))
    # the label is torchvision's index of the folder the image came from (red channel = 25 * label)
    red = d.train_x[:, 0].float().mean((1, 2))
    assert torch.allclose(red, d.train_y.float() * 25, atol=3)
    assert d.source == "CIFAR-10 (JPEG copy)" and d.digest.startswith("stat-sha256:")
    assert dataset_source("cifar10", root) == (d.source, d.digest)


@pytest.mark.parametrize("prefix", ["", "CIFAR-10-images/"])
def test_cifar10_jpeg_archive_second_load_uses_cache(tmp_path, cache, monkeypatch, prefix):
    import hashlib

    import bench.data.imagefolder as imf

    root = tmp_path / "root"
    archive = _archive(root, prefix=prefix)
    before = sorted(p.name for p in root.rglob("*"))
    a = load_dataset("cifar10", root)
    assert a.train_x.shape == (20, 3, 32, 32) and a.test_y.tolist() == list(range(10))
    assert a.digest == "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    assert a.source == "CIFAR-10 (JPEG copy)" and a.origin == str(archive)
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing written next to the data
    files = _cache_files(cache)
    assert any(f.startswith("tensors/cifar10-jpeg-") and f.endswith(".pt") for f in files)
    assert any(f.startswith("extracted/cifar10-jpeg-sha256-") for f in files)

    def boom(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(imf, "decode_images", boom)
    monkeypatch.setattr(imf, "extract_archive", boom)
    b = load_dataset("cifar10", root)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y) and b.digest == a.digest


def test_cifar10_jpeg_archives_in_two_roots_do_not_share_cache(tmp_path, cache):
    a = load_dataset("cifar10", _archive(tmp_path / "r1", seed=0).parents[1])
    b = load_dataset("cifar10", _archive(tmp_path / "r2", seed=1).parents[1])
    assert a.digest != b.digest and not torch.equal(a.train_x, b.train_x)
    assert len([f for f in _cache_files(cache) if f.startswith("tensors/")]) == 2


def test_cifar10_jpeg_folder_change_is_a_new_cache(tmp_path, cache):
    from PIL import Image

    root = tmp_path / "root"
    base = _image_folder(root / "CIFAR-10-images")
    a = load_dataset("cifar10", root)
    Image.new("RGB", (32, 32), (255, 255, 255)).save(base / "train" / "airplane" / "0000.jpg", "JPEG")
    b = load_dataset("cifar10", root)
    assert a.digest != b.digest and int(b.train_x[0].min()) > 240 and int(a.train_x[0].min()) < 10


def test_cifar10_prefers_torchvision_batches(tmp_path, cache):
    _write_cifar(tmp_path, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                 "batches.meta", "labels", 4, 10)
    _image_folder(tmp_path / "CIFAR-10-images")
    d = load_dataset("cifar10", tmp_path)
    assert d.source == "torchvision CIFAR-10 batches" and d.train_x.shape[0] == 20
    assert d.digest.startswith("sha256-list:")


def _tar_with(archive: Path, member: str, kind: str) -> None:
    import io
    import tarfile

    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            info = tarfile.TarInfo(f"{split}/airplane/0000.jpg")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
        info = tarfile.TarInfo(member)
        if kind == "file":
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        else:
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE}[kind]
            info.linkname = "../../outside" if kind != "device" else ""
            tar.addfile(info)


@pytest.mark.parametrize(("member", "kind", "what"), [
    ("../evil.jpg", "file", "'..' path"),
    ("train/../../evil.jpg", "file", "'..' path"),
    ("/tmp/binbench-evil.jpg", "file", "absolute path"),
    ("train/airplane/link.jpg", "symlink", "a link"),
    ("train/airplane/hard.jpg", "hardlink", "a link"),
    ("train/airplane/dev", "device", "a device"),
])
def test_cifar10_archive_refuses_unsafe_members(tmp_path, cache, member, kind, what):
    from bench.errors import BinbenchError

    root = tmp_path / "root"
    _tar_with(root / "CIFAR-10-images" / "cifar10-jpeg.tar.gz", member, kind)
    with pytest.raises(BinbenchError, match="refusing to extract") as exc:
        load_dataset("cifar10", root)
    assert what in str(exc.value) and repr(member) in str(exc.value) and "\n" not in str(exc.value)
    assert _cache_files(cache) == [] and not (tmp_path / "evil.jpg").exists()
    assert not Path("/tmp/binbench-evil.jpg").exists()


def test_cifar10_wrong_class_folders_is_one_line_error(tmp_path, cache):
    root = tmp_path / "root"
    _image_folder(root / "CIFAR-10-images", classes=JPEG_CLASSES[:3] + ("kitty",) + JPEG_CLASSES[4:])
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset("cifar10", root)
    msg = str(exc.value)
    assert "missing cat" in msg and "unexpected kitty" in msg and "airplane, automobile" in msg and "\n" not in msg
    assert _cache_files(cache) == []


def test_cifar10_missing_split_is_clear(tmp_path, cache):
    import shutil

    root = tmp_path / "root"
    _image_folder(root / "CIFAR-10-images")
    shutil.rmtree(root / "CIFAR-10-images" / "test")
    with pytest.raises(DataNotFoundError, match="has train/ but no test/"):
        load_dataset("cifar10", root)


def test_cifar10_truncated_archive_no_cache_no_traceback(tmp_path, cache, capsys):
    from bench.cli import main
    from bench.errors import BinbenchError

    root = tmp_path / "root"
    archive = _archive(root, train=20)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(BinbenchError, match="truncated or corrupt"):
        load_dataset("cifar10", root)
    assert _cache_files(cache) == []
    code = main(["run", "-e", "ste", "-m", "mlp", "-d", "cifar10", "--data-root", str(root), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "truncated or corrupt" in err and err.count("\n") == 1 and "Traceback" not in err
    assert _cache_files(cache) == []


def test_cifar10_undecodable_jpeg_leaves_no_cache(tmp_path, cache):
    from bench.errors import BinbenchError

    root = tmp_path / "root"
    base = _image_folder(root / "CIFAR-10-images")
    bad = base / "test" / "dog" / "0000.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # a JPEG header and nothing else
    with pytest.raises(BinbenchError, match="cannot be decoded") as exc:
        load_dataset("cifar10", root)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)
    assert _cache_files(cache) == []


def test_cifar10_resized_copy_is_refused(tmp_path, cache):
    from PIL import Image

    from bench.errors import BinbenchError

    root = tmp_path / "root"
    base = _image_folder(root / "CIFAR-10-images")
    big = base / "train" / "ship" / "0001.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(big, "JPEG")
    with pytest.raises(BinbenchError, match="is 64x64, not 32x32") as exc:
        load_dataset("cifar10", root)
    assert str(big) in str(exc.value) and _cache_files(cache) == []


def test_cifar10_spec_present_sees_jpeg_copy(tmp_path):
    spec = get_dataset("cifar10")
    assert not spec.present(tmp_path)
    (tmp_path / "CIFAR-10-images").mkdir()
    assert spec.present(tmp_path) and get_dataset("digits").present(tmp_path / "nowhere")


def test_cifar10_cache_write_is_atomic(tmp_path, cache, monkeypatch):
    import bench.data.imagefolder as imf

    def half_save(obj, f):
        Path(f).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    root = tmp_path / "root"
    _image_folder(root / "CIFAR-10-images")
    monkeypatch.setattr(imf.torch, "save", half_save)
    with pytest.warns(UserWarning, match="could not write"):
        d = load_dataset("cifar10", root)
    assert d.train_x.shape == (20, 3, 32, 32)
    assert _cache_files(cache) == []  # neither the half file nor a cache that a later load would trust


def test_sources_recorded_by_every_loader(tmp_path, cache):
    from bench.data import dataset_source

    d = load_dataset("digits")
    assert d.source == "scikit-learn digits (embedded)" and d.digest.startswith("sha256:")
    assert dataset_source("digits") == (d.source, d.digest)
    _write_cifar(tmp_path, "cifar-100-python", ["train", "test"], "meta", "fine_labels", 6, 100)
    c = load_dataset("cifar100", tmp_path)
    assert c.source == "torchvision CIFAR-100 batches" and dataset_source("cifar100", tmp_path) == (c.source, c.digest)
    with pytest.raises(DataNotFoundError):
        dataset_source("cifar10", tmp_path / "nowhere")


def _write_idx_gz(raw: Path, seed: int) -> None:
    import gzip
    import struct

    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", 6), ("t10k", 3)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        with gzip.open(raw / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">IIII", 2051, n, 28, 28) + imgs.tobytes())
        with gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">II", 2049, n) + labels.tobytes())


def test_mnist_extraction_follows_archive_content(tmp_path, cache):
    _write_idx_gz(tmp_path / "r1" / "MNIST" / "raw", seed=0)
    _write_idx_gz(tmp_path / "r2" / "MNIST" / "raw", seed=1)
    a, b = load_dataset("mnist", tmp_path / "r1"), load_dataset("mnist", tmp_path / "r2")
    assert a.train_x.shape == (6, 1, 28, 28) and not torch.equal(a.train_x, b.train_x)  # r2 did not reuse r1's
    assert a.digest != b.digest and a.source == "MNIST idx files"
    assert torch.equal(load_dataset("mnist", tmp_path / "r1").train_x, a.train_x)


def _shared_cifar_archive() -> Path | None:
    env = os.environ.get("BINBENCH_DATA")
    p = Path(env) / "CIFAR-10-images" / "cifar10-jpeg.tar.gz" if env else None
    return p if p is not None and p.is_file() else None


@pytest.mark.skipif(_shared_cifar_archive() is None,
                    reason="BINBENCH_DATA does not point at a folder with CIFAR-10-images/cifar10-jpeg.tar.gz")
def test_cifar10_from_shared_jpeg_archive():
    # the session's cache (conftest): the first load extracts and decodes (~20-40 s on one core), later ones read
    root = _shared_cifar_archive().parents[1]
    d = load_dataset("cifar10", root)
    assert d.source == "CIFAR-10 (JPEG copy)" and d.digest.startswith("sha256:")
    assert d.train_x.shape == (50000, 3, 32, 32) and d.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(d.train_y, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(d.test_y, minlength=10).tolist() == [1000] * 10
    mean = d.train_x[:5000].float().mean((0, 2, 3)) / 255  # CIFAR-10's channel means: 0.491, 0.482, 0.447
    assert torch.allclose(mean, torch.tensor([0.491, 0.482, 0.447]), atol=0.02)


# -- issue 15: caches keyed by content, data files are data (never code), damaged files are one line ----------
@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_like_caches_keyed_by_content(tmp_path, cache, name, folder):
    _write_idx_gz(tmp_path / "r1" / folder / "raw", seed=0)
    _write_idx_gz(tmp_path / "r2" / folder / "raw", seed=1)
    a = load_dataset(name, tmp_path / "r1")
    b = load_dataset(name, tmp_path / "r2")
    assert not torch.equal(a.train_x, b.train_x) and a.digest != b.digest
    again = load_dataset(name, tmp_path / "r1")  # r2's extraction did not replace r1's files
    assert torch.equal(again.train_x, a.train_x)
    extracted = sorted(p.name for p in (cache / "extracted").iterdir())
    assert len(extracted) == 2  # one folder per content digest


def test_cifar10_image_folders_in_two_roots_do_not_share_cache(tmp_path, cache):
    a = load_dataset("cifar10", _image_folder(tmp_path / "r1" / "CIFAR-10-images").parent)
    b = _image_folder(tmp_path / "r2" / "CIFAR-10-images")
    from PIL import Image

    Image.new("RGB", (32, 32), (255, 255, 255)).save(b / "train" / "airplane" / "0000.jpg", "JPEG")
    b = load_dataset("cifar10", b.parent)
    assert a.digest != b.digest and not torch.equal(a.train_x, b.train_x)


def test_cifar10_folder_copies_that_look_alike_to_stat_do_not_share_cache(tmp_path, cache):
    import shutil

    from PIL import Image

    a = load_dataset("cifar10", _image_folder(tmp_path / "r1" / "CIFAR-10-images").parent)
    shutil.copytree(tmp_path / "r1", tmp_path / "r2", copy_function=shutil.copy2)  # sizes and mtimes kept
    f = tmp_path / "r2" / "CIFAR-10-images" / "train" / "airplane" / "0000.jpg"
    st = f.stat()
    Image.new("RGB", (32, 32), (255, 255, 255)).save(f, "JPEG")
    with open(f, "r+b") as fh:  # the same size as before
        fh.truncate(st.st_size)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    b = load_dataset("cifar10", tmp_path / "r2")
    assert a.digest == b.digest  # stat sees no change: the digest is of paths, sizes and mtimes
    assert not torch.equal(a.train_x[0], b.train_x[0])  # but r2 was decoded, not served r1's cache


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, (f"open({str(_Evil.marker)!r}, 'w')",))


@pytest.mark.parametrize("target", ["data_batch_1", "batches.meta", "test_batch"])
@pytest.mark.parametrize("payload", [_Evil, _EvalEvil])
def test_crafted_cifar_batch_runs_nothing(tmp_path, cache, capsys, target, payload):
    from bench.cli import main

    _write_cifar(tmp_path, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                 "batches.meta", "labels", 4, 10)
    _Evil.marker = tmp_path / "PWNED"
    with open(tmp_path / "cifar-10-batches-py" / target, "wb") as fh:
        pickle.dump({"data": payload(), "labels": [0]}, fh, protocol=2)
    code = main(["run", "-e", "ste", "-d", "cifar10", "-m", "mlp", "--data-root", str(tmp_path), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "refusing to load" in err and "nothing in it was run" in err and err.count("\n") == 1
    assert "Traceback" not in err and not _Evil.marker.exists()


def _garbage_gz(root: Path):
    _write_idx_gz(root / "MNIST" / "raw", seed=0)
    (root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all" * 10)


def _truncated_gz(root: Path):
    _write_idx_gz(root / "MNIST" / "raw", seed=0)
    f = root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:20])


def _damaged_deflate(root: Path):
    _write_idx_gz(root / "MNIST" / "raw", seed=0)
    f = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    b = bytearray(f.read_bytes())
    b[30:60] = bytes(range(200, 230))  # inside the deflate stream: zlib.error, not an OSError
    f.write_bytes(bytes(b))


def _garbage_idx(root: Path):
    import gzip

    _write_idx_gz(root / "MNIST" / "raw", seed=0)
    for gz in (root / "MNIST" / "raw").glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
    (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x07garbage")


def _garbage_cifar(root: Path):
    _write_cifar(root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                 "batches.meta", "labels", 4, 10)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(os.urandom(300))


def _truncated_cifar(root: Path):
    _write_cifar(root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                 "batches.meta", "labels", 4, 10)
    f = root / "cifar-10-batches-py" / "test_batch"
    f.write_bytes(f.read_bytes()[:-100])


def _wrong_shape_cifar(root: Path):
    _write_cifar(root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
                 "batches.meta", "labels", 4, 10)
    with open(root / "cifar-10-batches-py" / "data_batch_2", "wb") as fh:
        pickle.dump({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]}, fh, protocol=2)


def _garbage_archive(root: Path):
    (root / "CIFAR-10-images").mkdir(parents=True)
    (root / "CIFAR-10-images" / "cifar10-jpeg.tar.gz").write_bytes(os.urandom(500))


@pytest.mark.parametrize(("dataset", "spoil", "needle"), [
    ("mnist", _garbage_gz, "is not a readable gzip archive"),
    ("mnist", _truncated_gz, "is not a readable gzip archive"),
    ("mnist", _damaged_deflate, "is not a readable gzip archive"),
    ("mnist", _garbage_idx, "damaged or not idx files"),
    ("cifar10", _garbage_cifar, "damaged or not a CIFAR batch"),
    ("cifar10", _truncated_cifar, "damaged or not a CIFAR batch"),
    ("cifar10", _wrong_shape_cifar, "is not a CIFAR batch (its 'data'"),
    ("cifar10", _garbage_archive, "truncated or corrupt"),
])
def test_damaged_data_files_are_one_line(tmp_path, cache, capsys, dataset, spoil, needle):
    from bench.cli import main

    spoil(tmp_path)
    code = main(["run", "-e", "ste", "-d", dataset, "-m", "mlp", "--data-root", str(tmp_path), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_cifar_unpickler_reads_python2_batches():
    """The real CIFAR files are Python 2 pickles: numpy.core names and the array bytes as a BINSTRING."""
    import io

    from bench.data.sources import CifarUnpickler

    raw = np.arange(6, dtype=np.uint8).tobytes()
    py2 = (b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00"
           b"\x85U\x01b\x87Rq\x04(K\x01K\x02K\x03\x86cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06(K\x03U\x01|NNNJ"
           b"\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06" + raw + b"tbU\x06labelsq\x07]q\x08(K\x01K\x02eu.")
    out = CifarUnpickler(io.BytesIO(py2), encoding="latin1").load()
    assert out["data"].tolist() == [[0, 1, 2], [3, 4, 5]] and out["labels"] == [1, 2]


def test_mnist_extraction_by_overlapping_writers(tmp_path, cache, monkeypatch):
    """Two trials that start together with a cold cache both read complete files (they once shared one
    temporary name, and the slower one crashed renaming a file the faster one had already moved)."""
    import shutil

    _write_idx_gz(tmp_path / "r" / "MNIST" / "raw", seed=3)
    copy, nested = shutil.copyfileobj, {}

    def overlapping_copy(fi, fo, *a, **kw):  # a second writer extracts the same archives mid-write
        if not nested:
            nested["started"] = True
            nested["data"] = load_dataset("mnist", tmp_path / "r")
        return copy(fi, fo, *a, **kw)

    monkeypatch.setattr(shutil, "copyfileobj", overlapping_copy)
    first = load_dataset("mnist", tmp_path / "r")
    assert torch.equal(first.train_x, nested["data"].train_x) and first.train_x.shape == (6, 1, 28, 28)
    assert not list(cache.rglob("*.tmp"))


def test_mnist_garbage_archive_is_one_line_error(tmp_path, cache):
    from bench.errors import BinbenchError

    raw = tmp_path / "MNIST" / "raw"
    _write_idx_gz(raw, seed=0)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not a gzip file at all")
    with pytest.raises(BinbenchError, match="train-images-idx3-ubyte.gz is not a readable gzip archive"):
        load_dataset("mnist", tmp_path)
    assert not list(cache.rglob("*.tmp"))
