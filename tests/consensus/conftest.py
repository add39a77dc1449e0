"""Shared fixtures for the consensus simulator tests."""

from __future__ import annotations

import pytest

from ehrshare_consensus.calibrate import CostModel


@pytest.fixture
def cost() -> CostModel:
    """Fixed CPU costs (close to this machine's ECDSA P-256) so runs are reproducible."""
    return CostModel(sign_s=2.0e-5, verify_s=5.0e-5, hash_s_per_byte=5.0e-10, source="fixed")
