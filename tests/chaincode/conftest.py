"""Fixtures of the chaincode tests (the world itself is built in chaincode_world)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chaincode_world import World, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = build_world(tmp_path_factory.mktemp("world"))
    yield w
    w.sandbox.close()


@pytest.fixture
def fresh_world(tmp_path: Path) -> Iterator[World]:
    w = build_world(tmp_path)
    yield w
    w.sandbox.close()
