"""bench.env: a copy of the code without .git (a working tree sent to a GPU machine) still names its commit."""

from __future__ import annotations

import shutil
import subprocess
import sys

from .conftest import REPO


def _commit_in(folder, env_extra: dict[str, str]) -> str:
    code = "from bench.env import git_commit; print(git_commit())"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(folder), **env_extra}
    res = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_a_copy_without_git_names_the_commit_it_was_given_and_says_so(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "bench", copy / "bench", ignore=shutil.ignore_patterns("__pycache__"))
    assert _commit_in(copy, {}) == "unknown"
    given = _commit_in(copy, {"BINBENCH_GIT_COMMIT": "0123abc"})
    assert given.startswith("0123abc ") and "BINBENCH_GIT_COMMIT" in given


def test_a_checkout_ignores_the_variable():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert _commit_in(REPO, {"BINBENCH_GIT_COMMIT": "0123abc"}).startswith(head)


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
"""


def test_the_cpu_is_recorded_beyond_its_model_name():
    """A virtual machine's model name ("AMD EPYC") hides the generation; family/model/stepping and the instruction
    set torch dispatches to are what decide a float32 kernel's rounding."""
    from bench.env import cpu_id, hardware

    assert cpu_id(CPUINFO) == "AuthenticAMD 25/17/1"  # the first processor's block, not the last one's
    assert cpu_id("") == "" and cpu_id("flags\t: fpu\n") == ""
    hw = hardware()
    assert hw["cpu_capability"] not in ("", "unknown") and "cpu_id" in hw


def test_replay_names_the_platform_fields_that_differ_or_were_never_recorded():
    import torch

    from bench.env import cpu_capability, cpu_id, cpu_model
    from bench.track.replay import platform_differences

    same = {"version.torch": torch.__version__, "hardware.cpu": cpu_model(), "hardware.cpu_id": cpu_id(),
            "hardware.cpu_capability": cpu_capability()}
    assert platform_differences(same) == []
    other = platform_differences({**same, "hardware.cpu_capability": "NO_AVX"})
    assert other == [f"(recorded hardware.cpu_capability 'NO_AVX', replayed on {cpu_capability()!r})"]
    old = platform_differences({"version.torch": torch.__version__, "hardware.cpu": cpu_model()})
    assert old == ["(not recorded by the run, so not compared: hardware.cpu_id, hardware.cpu_capability)"]


def test_the_report_header_names_the_recorded_cpu_details_when_there_are_any():
    from bench.report.collect import _cpu

    tags = {"hardware.cpu": "AMD EPYC", "hardware.cpu_id": "AuthenticAMD 25/17/1", "hardware.cpu_capability": "AVX2"}
    assert _cpu(tags) == "AMD EPYC (AuthenticAMD 25/17/1, AVX2)"
    assert _cpu({"hardware.cpu": "AMD EPYC"}) == "AMD EPYC"  # a run recorded before these fields
