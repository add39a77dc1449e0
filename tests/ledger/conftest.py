"""Fixtures of the embedded-ledger tests: a sandbox consortium with a manual clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ehrshare.ledger.sandbox import ManualClock, Sandbox


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_900_000_000)


@pytest.fixture
def sandbox(tmp_path: Path, clock: ManualClock) -> Iterator[Sandbox]:
    sb = Sandbox.open(tmp_path / "sb", clock=clock)
    yield sb
    sb.close()
