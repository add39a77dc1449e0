"""Crash points for fault-injection tests: ``kill -9`` at a named step boundary.

A write path calls :func:`fault_point` between its steps (``fault_point("grant.after_commit")``).
It does nothing unless the environment variable ``EHRSHARE_FAULT_AT`` names that step, in which
case the process sends itself SIGKILL there — no cleanup, no ``finally``, exactly what a power
cut or the OOM killer does. Tests run a real CLI process with the variable set and then check
that nothing committed is lost and nothing half-made is usable. Production never sets it.
"""

from __future__ import annotations

import os
import signal

__all__ = ["FAULT_ENV", "fault_point"]

FAULT_ENV = "EHRSHARE_FAULT_AT"


def fault_point(name: str) -> None:
    """Die at once with SIGKILL if ``$EHRSHARE_FAULT_AT`` equals ``name``; else do nothing."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
