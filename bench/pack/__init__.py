"""Packed trials: runs of one shape trained as one program (``train_pack``, ``packable``); see ``bench.pack.train``."""

from bench.pack.model import NotPackable, PackedModel
from bench.pack.train import Pack, pack_key, packable, start_members, train_pack

__all__ = ["NotPackable", "Pack", "PackedModel", "pack_key", "packable", "start_members", "train_pack"]
