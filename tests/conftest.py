"""Test-session settings shared by every test area."""

from __future__ import annotations

import os
import sys

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


# py_ecc (the independent implementation's library, tests only) raises the interpreter's
# recursion limit to 100,000 when a test module imports it. Past that point deep input that
# should end in a RecursionError could overflow the C stack instead (the full suite once
# segfaulted in json.loads). Once every test module is imported, put the limit back, so every
# test recurses as production does.
_RECURSION_LIMIT = sys.getrecursionlimit()


def pytest_collection_finish(session: object) -> None:
    sys.setrecursionlimit(_RECURSION_LIMIT)
