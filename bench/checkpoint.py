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

import hashlib
import os
import pickle
import zipfile
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
