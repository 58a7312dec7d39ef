"""Atomic checkpoint files, read back with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a torn checkpoint


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def claim(folder: str | os.PathLike, owner: str, keep: bool) -> Path:
    """Open a trial's checkpoint folder for ``owner`` (one execution of one trial).

    A new owner starts from an empty folder unless ``keep`` (a resumed suite continues old checkpoints); the same
    owner again (Ray retrying the trial after a crash) keeps it, so the retry continues from its last epoch. This
    replaces handing every epoch's checkpoint to Ray as well: the trial's own folder is the one copy.
    """
    import shutil

    folder = Path(folder)
    marker = folder / "owner"
    if not keep and folder.exists() and not (marker.exists() and marker.read_text() == owner):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(owner)
    return folder
