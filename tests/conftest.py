"""Test-session settings shared by every test area."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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
