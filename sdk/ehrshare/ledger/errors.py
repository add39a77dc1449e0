"""Errors of the ledger client, one class per stage that can fail (as in fabric-gateway).

Both backends raise these: the embedded ledger and the Fabric client. Each carries
the transaction id (when one exists) and the reason; messages never contain key material.
"""

from __future__ import annotations

from ehrshare.errors import (
    EXIT_CONFIG,
    EXIT_UNAVAILABLE,
    ConfigurationError,
    EhrshareError,
    IntegrityFailure,
)

__all__ = [
    "CommitError",
    "CommitStatusError",
    "EndorseError",
    "GatewayError",
    "LedgerCorrupt",
    "LedgerError",
    "LedgerIntegrityError",
    "OrderingKeyError",
    "SubmitError",
]


class LedgerError(EhrshareError):
    """Base class of every ledger client error (exit code 1: refused; 4 when unreachable)."""

    def __init__(
        self,
        message: str,
        *,
        transaction_id: str = "",
        details: tuple[str, ...] = (),
        unreachable: bool = False,
        creator_refused: bool = False,
    ):
        super().__init__(message)
        self.message = message
        self.transaction_id = transaction_id
        self.details = details
        self.unreachable = unreachable
        """True when no peer or orderer answered (down, or unreachable): nothing was decided."""
        self.creator_refused = creator_refused
        """True when the channel does not accept the caller's certificate (a wallet of another
        consortium, a TLS certificate used to sign): a setup problem, exit code 3."""
        if creator_refused:
            self.exit_code = EXIT_CONFIG
        if unreachable:
            self.exit_code = EXIT_UNAVAILABLE
            self.hint = "is the ledger running? For a local Fabric network: 'ehrshare network up'"

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


class LedgerIntegrityError(IntegrityFailure, LedgerError):
    """The stored ledger does not verify: a block, a signature, a transaction's replay, the key
    history or the world state differs from what was committed, or the chain is shorter than a
    witness saw. ``block`` (and ``txn``, the position in it) name the first bad block when one
    can be named. Never a refusal by the chaincode: the ledger itself is not to be trusted."""

    hint = "run 'ehrshare ledger verify' to find the first bad block"

    def __init__(self, message: str, *, block: int | None = None, txn: int | None = None) -> None:
        super().__init__(message)
        self.block = block
        self.txn = txn


class OrderingKeyError(ConfigurationError, LedgerError):
    """The embedded ledger cannot sign a new block: its ordering key file is missing, unreadable
    or not the key of the ordering certificate in its genesis block (a lost or foreign volume).
    Nothing was written; the ledger can still be read and verified."""

    hint = "restore the ledger directory from its backup"


class LedgerCorrupt(ConfigurationError, LedgerError):
    """The embedded ledger's database file is not a database, or is damaged (truncated, pages
    overwritten): nothing can be read from it or written to it. Restore it from a copy."""
