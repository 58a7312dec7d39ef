"""Make a committed suite store smaller: drop MLflow's system metrics (CPU, memory, disk and network samples every
few seconds, telemetry of the machine and not a result of any run) and compact the file.

A packed suite records them for each run that holds a monitor; the MNIST store of 189 trials was 97 MB, 80% of it
these samples. Every experiment's params, tags, per-epoch metrics and final metrics stay as they were; reports read
nothing else. Run it before the report, whose header names the store's digest as it read it:

    python scripts/slim_store.py results/mnist/mlflow.db && binbench report mnist --results-dir results/mnist
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path


def slim(path: Path) -> tuple[int, int, int]:
    """Delete the system metrics of every run in the SQLite store ``path`` and vacuum it; (rows removed, bytes
    before, bytes after)."""
    before = path.stat().st_size
    con = sqlite3.connect(path)
    try:
        with con:
            removed = con.execute("DELETE FROM metrics WHERE key LIKE 'system/%'").rowcount
            con.execute("DELETE FROM latest_metrics WHERE key LIKE 'system/%'")
        con.execute("VACUUM")
    finally:
        con.close()
    return removed, before, path.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stores", nargs="+", type=Path, help="MLflow SQLite files (a results folder's mlflow.db)")
    args = ap.parse_args()
    for path in args.stores:
        if not path.is_file():
            print(f"slim_store: {path} is not a file: give a results folder's mlflow.db", file=sys.stderr)
            return 2
        try:
            removed, before, after = slim(path)
        except sqlite3.DatabaseError as exc:
            print(f"slim_store: {path} is not an MLflow SQLite store ({exc})", file=sys.stderr)
            return 2
        print(f"{path}: {removed} system-metric rows removed, {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
