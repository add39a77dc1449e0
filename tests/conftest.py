"""Test-session settings shared by every test area."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# CLI output must not depend on the terminal this suite happens to run in: rich takes its width
# from COLUMNS when stdout is not a terminal, so pin one (the CLI itself never breaks a message
# line; see ehrshare.console). Subprocesses inherit it.
os.environ["COLUMNS"] = "80"
os.environ["LINES"] = "25"

# Pairing operations take milliseconds; hypothesis' default 200 ms deadline
# would turn a busy CI machine into flaky failures, so no deadline here.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.load_profile("ci" if os.environ.get("CI") else "default")
