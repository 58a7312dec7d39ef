"""Dataset loaders read the real on-disk formats (written here, tiny), and missing data is a clear error."""

from __future__ import annotations

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
