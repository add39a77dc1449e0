"""The one place that decides whether a chaincode function is submitted or evaluated.

The answer comes from the chaincode's own function table (:data:`ehrshare_chaincode.FUNCTIONS`,
built from the ``@submit``/``@evaluate`` marks on the contract's methods), so the SDK cannot
drift from the contract: a function the contract does not have is a programming error here,
before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable

from ehrshare.ledger.api import Contract
from ehrshare.ledger.errors import LedgerError
from ehrshare_chaincode import FUNCTIONS as CHAINCODE_FUNCTIONS

__all__ = ["CHAINCODE_FUNCTIONS", "ErrorMap", "transact"]

ErrorMap = Callable[[str, LedgerError], BaseException]
"""``(function, ledger error) → the exception to raise``; returning the ledger error itself
re-raises it unchanged."""


def transact(
    contract: Contract, function: str, *args: str, errors: ErrorMap | None = None
) -> bytes:
    """Submit ``function`` (ordered and committed) or evaluate it (a query on one peer), as the
    chaincode declares it; its raw answer. A failure raises what ``errors`` maps it to (the
    ledger's own error without a map)."""
    spec = CHAINCODE_FUNCTIONS.get(function)
    if spec is None:
        raise KeyError(f"the EHR chaincode has no function {function!r}")
    run = contract.submit_transaction if spec.kind == "submit" else contract.evaluate_transaction
    try:
        return run(function, *args)
    except LedgerError as exc:
        if errors is None:
            raise
        mapped = errors(function, exc)
        if mapped is exc:
            raise
        raise mapped from None
