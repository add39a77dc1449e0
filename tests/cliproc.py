"""Run the ``ehrshare`` CLI as its own process, the way a user (or a crash) meets it.

Tests that kill the CLI at a step boundary (``EHRSHARE_FAULT_AT``) or need a real process exit
use :func:`run_ehrshare`. The environment is this process's minus the variables a test must set
on purpose (the crash point, passphrases), with a wide ``COLUMNS`` so that no assertion depends on
the terminal width of the machine that runs the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys

from ehrshare.commands.wallet import NEW_PASSPHRASE_ENV
from ehrshare.faults import FAULT_ENV
from ehrshare.wallet import PASSPHRASE_ENV

_CLEARED = (FAULT_ENV, PASSPHRASE_ENV, NEW_PASSPHRASE_ENV)


def run_ehrshare(
    *args: str,
    fault: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m ehrshare ARGS``; ``fault`` names the step to be killed at (SIGKILL)."""
    full = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    full["COLUMNS"] = "200"
    if fault is not None:
        full[FAULT_ENV] = fault
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ehrshare", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
        check=False,
    )
