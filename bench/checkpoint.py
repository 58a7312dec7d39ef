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
