"""Fixtures for the SDK tests: a fresh local consortium and enrolled members per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sdk_people import MEMBERS, People

from ehrshare.ledger.sandbox import ManualClock
from ehrshare.provisioning import Consortium


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def consortium(tmp_path: Path, clock: ManualClock) -> Iterator[Consortium]:
    c = Consortium.init(tmp_path / "consortium", clock=clock)
    yield c
    c.close()


@pytest.fixture
def people(consortium: Consortium, clock: ManualClock) -> Iterator[People]:
    sessions = {}
    for name, (hospital, role) in MEMBERS.items():
        consortium.add_member(name, hospital, role)
        s = consortium.session(name)
        s.enroll()
        s.publish_type_keys()
        sessions[name] = s
    yield People(consortium, clock, **sessions)
    for s in sessions.values():
        s.close()
