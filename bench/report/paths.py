"""No machine path in a report file: absolute paths in provenance lines and notes become relative to the
results folder (where the report's files are), or, outside it, keep only their last part (``.../data``).

A committed report then names nothing of the machine it was made on, and the paths it does name still work
from the results folder (``mlflow.db``, ``checkpoints/KEY``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: an absolute POSIX path not inside a word, a URL or a fraction (``W1A1/W1A32``, ``e/E`` and ``32/32`` stay)
ABSOLUTE = re.compile(r"(?<![^\s='\"(,])/(?:[\w.+@%=-]+/)*[\w.+@%=-]+/?")
SQLITE = re.compile(r"sqlite:///(/\S+)")


def _short(path: str, root: Path) -> str:
    p = Path(path.rstrip("/") or "/")
    try:
        rel = p.resolve().relative_to(root)
    except (ValueError, OSError):
        return f".../{p.name}" if p.name else "..."
    return str(rel) if str(rel) != "." else "."


def relative(text: str, results_dir: Path) -> str:
    """``text`` with every absolute path made relative to ``results_dir`` (or elided outside it)."""
    root = Path(os.path.abspath(results_dir)).resolve()
    text = SQLITE.sub(lambda m: f"sqlite:///{_short(m.group(1), root)}", text)
    return ABSOLUTE.sub(lambda m: _short(m.group(0), root), text)


__all__ = ["relative"]
