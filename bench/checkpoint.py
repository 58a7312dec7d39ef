"""Atomic, checksummed checkpoint files, read back with ``torch.load(weights_only=True)``.

Every file is an ordinary torch file holding the state dict plus ``_sha256``: a sha256 over the state's
contents (every tensor's dtype, shape and bytes; every other value's repr; keys in order). torch itself does
not notice a flipped byte inside a tensor's storage, so :func:`load` recomputes the digest and refuses a file
whose weights changed after they were written. Files written before the checksum existed (no ``_sha256``) still
load, unverified.

Every problem with a file is a :class:`CheckpointError` of one line that names the file and what to do: a
file that is not a torch file, or that holds objects a checkpoint never holds (``torch.load(weights_only=True)``
refuses them), is "not a binbench checkpoint"; a truncated file or one whose digest does not match is
"damaged".
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.errors import BinbenchError

CHECKSUM_KEY = "_sha256"


class CheckpointError(BinbenchError):
    """A checkpoint file that cannot be used: damaged, truncated, or not one binbench wrote."""


def state_digest(state: Any) -> str:
    """sha256 over a state's contents, independent of how torch lays the file out."""
    h = hashlib.sha256()

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().to("cpu").contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool
                         else t.to(torch.uint8).numpy().tobytes())
        elif isinstance(v, dict):
            h.update(f"D{len(v)}".encode())
            for k, x in v.items():
                h.update(f"K{k!r}".encode())
                walk(x)
        elif isinstance(v, (list, tuple)):
            h.update(f"{type(v).__name__[0]}{len(v)}".encode())
            for x in v:
                walk(x)
        else:
            h.update(f"V{v!r}".encode())

    walk(state)
    return h.hexdigest()


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    body = {k: v for k, v in state.items() if k != CHECKSUM_KEY}
    torch.save({**body, CHECKSUM_KEY: state_digest(body)}, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a torn checkpoint


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", fix: str = "") -> dict[str, Any]:
    """The state saved at ``path`` (without its checksum), verified; CheckpointError when it cannot be used.

    ``fix`` says what to do about a bad file (default: delete it, or rerun without --resume).
    """
    path = Path(path)
    fix = fix or f"delete {path} (or its folder) and rerun without --resume"
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file: {fix}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # objects weights_only refuses, or bytes that are no torch file at all
        raise CheckpointError(f"{path} is not a binbench checkpoint (not a file binbench writes, or it holds "
                              f"objects a checkpoint never holds); it was not loaded: {fix}") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError, IndexError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise CheckpointError(f"checkpoint {path} does not exist: {fix}") from None
        raise CheckpointError(f"checkpoint {path} is damaged or truncated ({type(exc).__name__}): {fix}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a binbench checkpoint (it holds a {type(state).__name__}, not a "
                              f"mapping): {fix}")
    expected = state.pop(CHECKSUM_KEY, None)
    if expected is not None and expected != state_digest(state):
        raise CheckpointError(f"checkpoint {path} is damaged: its contents no longer match the checksum written "
                              f"with it: {fix}")
    return state


# -- where a run stands: what its checkpoint saves besides the tensors --------------------------------------
@dataclass(frozen=True)
class Best:
    """The best epochs of a run so far (epochs as 0-based loop indices within their stage): the best test epoch of
    the last stage, the epoch its validation split selects, and each stage's best score (for the hand-off)."""

    top1: float | None = None
    top5: float | None = None
    epoch: int | None = None
    val_top1: float | None = None
    selected_top1: float | None = None
    selected_epoch: int | None = None
    stages: Mapping[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As a checkpoint file holds it (the layout files have had since before this type: ``stage<i>`` keys)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "stages" and v is not None}
        return {**out, **{f"stage{i}": s for i, s in self.stages.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Best:
        names = {f.name for f in dataclasses.fields(cls)} - {"stages"}
        return cls(**{k: v for k, v in d.items() if k in names},
                   stages={int(k[5:]): v for k, v in d.items() if k.startswith("stage") and k[5:].isdigit()})


@dataclass(frozen=True)
class RunState:
    """Where a run stands: the next stage and epoch, the epochs' records, the best epochs, the optimizer's and
    scheduler's state inside a stage, and how the run ended. ``history`` grows as epochs end; everything else
    changes by replacing the state. :meth:`save` and :meth:`load` are the one way it reaches a file."""

    stage: int = 0
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: Best = field(default_factory=Best)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    status: str = "running"

    def save(self, path: str | os.PathLike, key: str, tensors: Mapping[str, Any]) -> None:
        """The state with the run's key and its tensors (weights, random generators, diagnostics) at ``path``."""
        save(path, {"key": key, **tensors, "stage": self.stage, "epoch": self.epoch, "history": self.history,
                    "best": self.best.to_dict(), "optimizer": self.optimizer, "scheduler": self.scheduler,
                    "status": self.status})

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[RunState, dict[str, Any]]:
        """(the state, the whole file: its key and tensors) saved at ``path``; CheckpointError when a part is
        missing."""
        saved = load(path)
        missing = [k for k in ("key", "stage", "epoch", "history", "best", "optimizer", "scheduler") if k not in saved]
        if missing:
            raise CheckpointError(f"{path} is not a binbench checkpoint (no {missing[0]!r} in it): delete it, or "
                                  "rerun without --resume")
        return cls(saved["stage"], saved["epoch"], saved["history"], Best.from_dict(saved["best"]),
                   saved["optimizer"], saved["scheduler"], saved.get("status", "running")), saved
