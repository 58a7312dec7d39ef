from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# one thread, as binbench runs by default: on a machine shared with other work (CI's 2 cores beside another job)
# torch's threads wait on each other, and the tests' small models ran 4x slower with two (tests/test_pack.py and
# test_estimators_registry.py: 125 s with two threads, 32 s with one, on 2 cores beside another engineer's runs)
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent


def shared_data() -> Path | None:
    env = os.environ.get("BINBENCH_DATA")
    return Path(env) if env and (Path(env) / "MNIST" / "raw").is_dir() else None


needs_mnist = pytest.mark.skipif(
    shared_data() is None,
    reason="BINBENCH_DATA does not point at a folder with MNIST/raw (CI sets it to ../shared/data)",
)

#: a small, fast run on the embedded digits data
TINY = {"model": "mlp", "dataset": "digits", "model_args": {"hidden": [64, 64]}, "threads": 1}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # extracted archives and other cache files go to a per-session folder, never the user's
    cache = tmp_path_factory.getbasetemp() / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))


@pytest.fixture(scope="session", autouse=True)
def _migrated_store_template(tmp_path_factory):
    """A new MLflow SQLite store made in this process starts as a copy of one migrated once per session. MLflow
    builds every new store by running all its schema migrations (3-4 s a store on 2 shared cores, and the default
    run makes dozens); the copy holds the same schema at the same revision, which MLflow verifies when it opens
    the store. Stores that CLI subprocesses and worker processes create are migrated as a user's are."""
    import sqlite3

    try:
        from mlflow.store.db import utils
    except ImportError:
        yield
        return
    original = getattr(utils, "_initialize_tables", None)
    if original is None:  # another MLflow: every store migrates (slower, the same tests)
        yield
        return
    template = tmp_path_factory.getbasetemp() / "mlflow-template.db"

    def initialize(engine) -> None:
        target = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
        if not target or target == ":memory:":
            original(engine)
            return
        if not template.exists():
            import sqlalchemy

            made = sqlalchemy.create_engine(f"sqlite:///{template}")
            original(made)
            made.dispose()
        engine.dispose()  # no pooled connection of the empty file outlives the copy
        src, dst = sqlite3.connect(template), sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()

    utils._initialize_tables = initialize
    yield
    utils._initialize_tables = original


@pytest.fixture(autouse=True)
def _isolated_run_store(tmp_path_factory, monkeypatch):
    # `binbench run` records in MLflow; tests keep that store out of the repository's results/
    store = tmp_path_factory.getbasetemp() / "run-store"
    store.mkdir(exist_ok=True)
    monkeypatch.setenv("BINBENCH_RUN_STORE", f"sqlite:///{store / 'mlflow.db'}")


def cli(*args: str, timeout: float = 600, env: dict | None = None):
    """``python -m bench.cli ARGS`` from the repository, its output captured (the suite and report tests)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def cli_here(*args: str):
    """``binbench ARGS`` in this process (``bench.cli.main``), its output captured as :func:`cli` captures it: for
    tests about what a command does and prints, not about a fresh interpreter (it saves the seconds a new process
    spends importing torch and MLflow; a suite's trials run in this process too with ``--max-concurrent 1``).
    ``sys.argv`` is the command's while it runs (a suite's parent run records it as the command that made it);
    torch's thread count, which a training run sets, is restored after it."""
    import contextlib
    import io
    import subprocess
    import sys

    from bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads, argv = torch.get_num_threads(), sys.argv
    sys.argv = ["binbench", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        torch.set_num_threads(threads)
        sys.argv = argv
    return subprocess.CompletedProcess(["binbench", *args], code, out.getvalue(), err.getvalue())


_SERVER = r"""
import contextlib, io, json, os, sys, traceback
reply = os.fdopen(int(sys.argv[1]), "w")
for line in sys.stdin:
    request = json.loads(line)
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if "argv" in request:
                from bench.cli import main
                sys.argv = ["binbench", *request["argv"]]
                code = main(request["argv"])
            else:
                exec(compile(request["code"], "<test>", "exec"), {"__name__": "__main__"})
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
    reply.write(json.dumps({"returncode": code or 0, "stdout": out.getvalue(), "stderr": err.getvalue()}) + "\n")
    reply.flush()
"""


class Interpreter:
    """One Python process of its own (its own working folder and environment: another PYTHONPATH, a checkout of
    its own) that runs many commands, each with its output captured as :func:`cli` captures it: for tests that
    need a process apart from pytest's but not a new one per command (each new one spends seconds importing torch
    and MLflow). Commands run one after another in the same interpreter, as :func:`cli_here` runs them in pytest's;
    what the process itself writes outside Python's ``sys.stdout``/``sys.stderr`` goes to ``log``."""

    def __init__(self, cwd: str | Path, env: dict[str, str], log: Path):
        import subprocess
        import sys

        read, write = os.pipe()
        self.log = log
        with log.open("w") as sink:
            self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(write)], cwd=cwd, env=env, text=True,
                                         stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.STDOUT,
                                         pass_fds=(write,))
        os.close(write)
        self.replies = os.fdopen(read)

    def _ask(self, request: dict, what: str):
        import json
        import subprocess

        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.replies.readline()
        if not line:
            raise RuntimeError(f"the interpreter ended during {what}: {self.log.read_text()[-3000:]}")
        r = json.loads(line)
        return subprocess.CompletedProcess(what, r["returncode"], r["stdout"], r["stderr"])

    def cli(self, *args: str):
        """``binbench ARGS`` in the interpreter."""
        return self._ask({"argv": list(args)}, "binbench " + " ".join(args))

    def python(self, code: str):
        """``code`` run as a script's body in the interpreter."""
        return self._ask({"code": code}, "code")

    def close(self) -> None:
        """End the interpreter (once its command ends; one still running after 10 s is killed)."""
        import subprocess

        if self.proc.stdin.closed:
            return
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a command still running (its test timed out): not waited for
            self.proc.kill()
            self.proc.wait()
        self.replies.close()

    def __enter__(self) -> Interpreter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
