"""The one place that decides whether a chaincode function is submitted or evaluated.

The answer comes from the chaincode's own function table (:data:`ehrshare_chaincode.FUNCTIONS`,
built from the ``@submit``/``@evaluate`` marks on the contract's methods), so the SDK cannot
drift from the contract: a function the contract does not have is a programming error here,
before anything is sent.
"""

from __future__ import annotations

from ehrshare.ledger.api import Contract
from ehrshare_chaincode import FUNCTIONS as CHAINCODE_FUNCTIONS

__all__ = ["CHAINCODE_FUNCTIONS", "transact"]


def transact(contract: Contract, function: str, *args: str) -> bytes:
    """Submit ``function`` (ordered and committed) or evaluate it (a query on one peer), as the
    chaincode declares it; its raw answer."""
    spec = CHAINCODE_FUNCTIONS.get(function)
    if spec is None:
        raise KeyError(f"the EHR chaincode has no function {function!r}")
    if spec.kind == "submit":
        return contract.submit_transaction(function, *args)
    return contract.evaluate_transaction(function, *args)
