"""Fixtures of the services tests (the world itself is in services_world.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from services_world import World, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = build_world(tmp_path_factory.mktemp("services"))
    yield w
    w.sandbox.close()
