"""The exported file: one safetensors file whose header metadata holds the manifest (JSON).

safetensors because it stores raw tensors with no code (no pickle: loading runs nothing), its header gives every
tensor's byte range (the sizes in the tables are measured from it) and it is read by the usual tools in Python,
Rust and C++. Tensors: ``<op>.weight_bits`` (uint8, the signs' bit stream, ceil(n / 8) bytes), ``<op>.thresh``
(int32) and ``<op>.flip`` (bool) per channel, ``<op>.direction`` (int8) of a folded max-pool, float32 scales,
biases and alphas where a binary layer's output stays real, and the float layers' tensors as they are.
The manifest (``binbench.manifest``): the format and its version, the model, estimator, resolved config, run key,
the graph (the ops in order), the input normalisation, the sha256 digest of the tensors and what is folded.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.errors import BinbenchError

FORMAT = "binbench-bnn"
VERSION = 1
MANIFEST_KEY = "binbench.manifest"


@dataclass(frozen=True)
class Sizes:
    """Bytes measured from the file: the binary layers' tensors (bits and their folded per-channel values), the
    float layers' tensors, and the whole file (header and manifest included)."""

    binary: int
    float: int
    file: int

    @property
    def payload(self) -> int:
        return self.binary + self.float


def digest(tensors: dict[str, Tensor]) -> str:
    """sha256 over the tensors in name order: each name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def save(path: str | Path, tensors: dict[str, Tensor], manifest: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "version": VERSION, **manifest, "digest": digest(tensors)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={MANIFEST_KEY: json.dumps(manifest, default=str)})
    return path


def load(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, manifest) of an exported file; a file that is not one, or whose digest differs, is refused."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise BinbenchError(f"no exported file {path}: make one with `binbench export RUN`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    except (SafetensorError, OSError, ValueError) as exc:
        raise BinbenchError(f"{path} is not a safetensors file ({exc}): give a file `binbench export` wrote") from None
    if MANIFEST_KEY not in meta:
        raise BinbenchError(f"{path} holds no binbench manifest: give a file `binbench export` wrote")
    manifest = json.loads(meta[MANIFEST_KEY])
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BinbenchError(f"{path} is format {manifest.get('format')} v{manifest.get('version')}; this binbench "
                            f"reads {FORMAT} v{VERSION}: export the run again")
    if digest(tensors) != manifest.get("digest"):
        raise BinbenchError(f"{path}: its tensors do not match the manifest's digest (the file was changed or "
                            "damaged): export the run again")
    return tensors, manifest


def sizes(path: str | Path) -> Sizes:
    """The bytes of the binary and the float part, from the byte ranges in the file's own header."""
    path = Path(path)
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    manifest = json.loads(header.get("__metadata__", {}).get(MANIFEST_KEY, "{}"))
    part = {f"{i}.": op.get("part", "float") for i, op in enumerate(manifest.get("graph", []))}
    binary = floating = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        size = info["data_offsets"][1] - info["data_offsets"][0]
        if part.get(name.split(".")[0] + ".") == "binary":
            binary += size
        else:
            floating += size
    return Sizes(binary, floating, path.stat().st_size)
