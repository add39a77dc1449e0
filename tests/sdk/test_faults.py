"""The crash-point hook kills only where it is told to."""

from __future__ import annotations

import signal
import subprocess
import sys

PROG = (
    "from ehrshare.faults import fault_point\n"
    "fault_point('a')\n"
    "print('past a', flush=True)\n"
    "fault_point('b')\n"
)


def _run(at: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if at is not None:
        env["EHRSHARE_FAULT_AT"] = at
    return subprocess.run(
        [sys.executable, "-c", PROG], env=env, capture_output=True, text=True, check=False
    )


def test_no_variable_no_fault() -> None:
    done = _run(None)
    assert done.returncode == 0 and "past a" in done.stdout


def test_named_step_is_killed_with_sigkill() -> None:
    first = _run("a")
    assert first.returncode == -signal.SIGKILL and "past a" not in first.stdout
    second = _run("b")
    assert second.returncode == -signal.SIGKILL and "past a" in second.stdout
