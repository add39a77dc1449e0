"""Errors of the ledger client, one class per stage that can fail (as in fabric-gateway).

Both backends raise these: the embedded ledger and the Fabric client. Each carries
the transaction id (when one exists) and the reason; messages never contain key material.
"""

from __future__ import annotations

__all__ = [
    "CommitError",
    "CommitStatusError",
    "EndorseError",
    "GatewayError",
    "LedgerError",
    "LedgerIntegrityError",
    "OrderingKeyError",
    "SubmitError",
]


class LedgerError(Exception):
    """Base class of every ledger client error."""

    def __init__(
        self,
        message: str,
        *,
        transaction_id: str = "",
        details: tuple[str, ...] = (),
        unreachable: bool = False,
    ):
        super().__init__(message)
        self.message = message
        self.transaction_id = transaction_id
        self.details = details
        self.unreachable = unreachable
        """True when no peer or orderer answered (down, or unreachable): nothing was decided."""

    def __str__(self) -> str:
        if self.transaction_id:
            return f"{self.message} (transaction {self.transaction_id})"
        return self.message


class GatewayError(LedgerError):
    """An evaluation failed (chaincode error, bad signature, unknown channel or contract)."""


class EndorseError(LedgerError):
    """Endorsement of a submitted transaction failed; nothing was sent for ordering."""


class SubmitError(LedgerError):
    """The endorsed transaction could not be handed to ordering (or written to the block log)."""


class CommitStatusError(LedgerError):
    """The commit status of a submitted transaction could not be obtained."""


class CommitError(LedgerError):
    """The transaction was ordered but committed as invalid (e.g. ``MVCC_READ_CONFLICT``)."""

    def __init__(self, message: str, *, transaction_id: str = "", code: str = "") -> None:
        super().__init__(message, transaction_id=transaction_id)
        self.code = code


class LedgerIntegrityError(LedgerError):
    """The stored ledger does not verify: a block, a signature, a transaction's replay, the key
    history or the world state differs from what was committed, or the chain is shorter than a
    witness saw. ``block`` (and ``txn``, the position in it) name the first bad block when one
    can be named. Never a refusal by the chaincode: the ledger itself is not to be trusted."""

    def __init__(self, message: str, *, block: int | None = None, txn: int | None = None) -> None:
        super().__init__(message)
        self.block = block
        self.txn = txn


class OrderingKeyError(LedgerError):
    """The embedded ledger cannot sign a new block: its ordering key file is missing, unreadable
    or not the key of the ordering certificate in its genesis block (a lost or foreign volume).
    Nothing was written; the ledger can still be read and verified."""
