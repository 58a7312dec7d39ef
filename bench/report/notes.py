"""The reporter's notes, kept beside the report so that regenerating it keeps them.

``binbench report SUITE --note TEXT`` adds TEXT to ``<results>/notes.txt`` (one note per paragraph, blank
lines between; lines starting with ``#`` are comments) unless it is there already; every report of that folder
prints every note in its header. Edit or delete the file to change or drop a note. Absolute paths in a note
are stored relative to the results folder (:func:`bench.report.paths.relative`), as the report prints them.
"""

from __future__ import annotations

from pathlib import Path

from bench.report.paths import relative

FILE = "notes.txt"
HEADER = ("# Notes printed in the header of every report of this folder (binbench report --note TEXT adds one).\n"
          "# One note per paragraph; edit or delete them here.\n")


def _norm(text: str) -> str:
    return " ".join(text.split())


def load(results_dir: Path) -> list[str]:
    """The notes stored in ``results_dir`` (none when there is no file)."""
    path = Path(results_dir) / FILE
    if not path.is_file():
        return []
    paragraphs, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def merged(results_dir: Path, new: list[str]) -> list[str]:
    """The stored notes, then each of ``new`` not stored yet; the file is rewritten when a note was added."""
    notes = load(results_dir)
    known = {_norm(n) for n in notes}
    added = [_norm(relative(n, results_dir)) for n in new if _norm(relative(n, results_dir)) not in known]
    added = list(dict.fromkeys(a for a in added if a))
    if added:
        notes += added
        body = "\n\n".join(notes)
        (Path(results_dir) / FILE).write_text(f"{HEADER}\n{body}\n", encoding="utf-8")
    return notes


__all__ = ["FILE", "load", "merged"]
