"""The typed client for the trivial key-value chaincode (:mod:`ehrshare_chaincode.kv`), the
yardstick ``ehrshare bench fabric`` measures the contract against. Names arguments only.
"""

from __future__ import annotations

from typing import Any

from ehrshare.ledger.api import Contract

__all__ = ["KvContract"]


class KvContract:
    """``Put`` and ``Get`` of the kv chaincode through a ledger contract object."""

    def __init__(self, contract: Contract) -> None:
        self._contract = contract

    def put(self, key: str, value: bytes) -> None:
        """Write ``key`` (ordered and committed)."""
        self._contract.submit_transaction("Put", key, value)

    def get(self, key: str) -> bytes:
        """Read ``key`` on one peer (ChaincodeError text ``key … does not exist`` if absent)."""
        return self._contract.evaluate_transaction("Get", key)

    def put_proposal(self, key: str, value: bytes) -> Any:
        """The fine-grained flow's proposal for ``Put`` (for benchmarks that time each stage)."""
        return self._contract.new_proposal("Put", key, value)  # type: ignore[attr-defined]
