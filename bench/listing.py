"""``binbench list``: the registries' listings without importing torch, from a cache that knows when it is stale.

Listing a registry means importing its modules, and every estimator and model module imports torch (seconds). The
listing is a few strings per name, so it is cached under ``$XDG_CACHE_HOME/binbench/`` with a fingerprint of
everything that can change it: binbench's version, the size and modification time of every source file of binbench
(``bench/``, ``estimators/``), and the entry points of the registry's group with their distributions' versions
and module files. A fingerprint that differs rebuilds the listing (one slow run); a cache that cannot be read or
written is ignored.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

#: the entry-point group of each registry
GROUPS = {"estimators": "binbench.estimators", "models": "binbench.models", "datasets": "binbench.datasets"}


def _cache_file(kind: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "binbench" / f"listing-{kind}.json"


def _stat(path: Path) -> str:
    try:
        st = path.stat()
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return f"{path}:absent"


def _source_files() -> list[Path]:
    roots = []
    for pkg in ("bench", "estimators"):
        spec = importlib.util.find_spec(pkg)  # top-level packages: found, not imported
        roots += [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    return sorted(p for root in roots for p in root.rglob("*.py"))


def _entry_point_file(value: str) -> str:
    module = value.split(":")[0]
    try:
        spec = importlib.util.find_spec(module)  # imports the parent package only (a plugin's __init__)
    except (ImportError, ValueError):
        return f"{module}:unfound"
    return _stat(Path(spec.origin)) if spec and spec.origin else f"{module}:unfound"


def fingerprint(kind: str) -> str:
    from bench import __version__

    parts = [__version__, *(_stat(p) for p in _source_files())]
    for ep in sorted(entry_points(group=GROUPS[kind]), key=lambda e: (e.name, e.value)):
        dist = getattr(ep, "dist", None)
        parts.append(f"{ep.name}={ep.value} {dist.name if dist else ''} {dist.version if dist else ''} "
                     f"{_entry_point_file(ep.value)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cached_listing(kind: str, build: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of a registry's listing (``build()`` imports the registry), from the cache while it is fresh."""
    file, fp = _cache_file(kind), fingerprint(kind)
    try:
        cached = json.loads(file.read_text())
        if cached.get("fingerprint") == fp:
            return cached["rows"]
    except (OSError, ValueError, AttributeError):
        pass
    rows = build()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": fp, "rows": rows}))
        tmp.replace(file)
    except OSError:
        pass
    return rows
