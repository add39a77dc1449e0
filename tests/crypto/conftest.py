"""Fixtures of the crypto tests: one toy master key and per-identity, per-type keys."""

from __future__ import annotations

import pytest
from _keyring import Keyring


@pytest.fixture(scope="session")
def keys() -> Keyring:
    return Keyring()
