"""The chaincode's view of the ledger: a stub protocol modelled on Fabric's ChaincodeStub.

The contract talks to the world state only through :class:`ChaincodeStub`, so the same contract code
runs on the embedded ledger (``ehrshare.ledger``) and under the chaincode-as-a-service server
(:mod:`ehrshare_chaincode.ccaas`) speaking the Fabric peer's chaincode message protocol. This
module must not import anything backend-specific: no SQLite, no gRPC, no wall clock.

Composite keys use Fabric's encoding exactly (``\\x00`` + object type + ``\\x00`` + each attribute +
``\\x00``), so partial-key range scans and their byte order are the same on both backends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

__all__ = [
    "MAX_UNICODE_RUNE",
    "ChaincodeError",
    "ChaincodeFunction",
    "ChaincodeStub",
    "KeyModification",
    "KeyValue",
    "TxTimestamp",
    "create_composite_key",
    "partial_composite_range",
    "split_composite_key",
]

# Fabric marks the end of a partial composite-key range with the largest code point.
MAX_UNICODE_RUNE = "\U0010ffff"
_COMPOSITE_NS = "\x00"


class ChaincodeError(Exception):
    """A chaincode failure: the transaction is rejected (status 500) and changes nothing.

    The message is a lower-case sentence naming the object, e.g. ``record r-17 does not exist``;
    it is shown to the caller, so it never contains secret material.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.status = 500


class TxTimestamp(NamedTuple):
    """The transaction's timestamp as the client put it in the proposal (seconds, nanoseconds)."""

    seconds: int
    nanos: int


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One result row of a range query."""

    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class KeyModification:
    """One entry of a key's history: the value written by a committed transaction."""

    tx_id: str
    value: bytes
    timestamp: TxTimestamp
    is_delete: bool


def _check_attribute(part: str, what: str) -> None:
    if _COMPOSITE_NS in part or MAX_UNICODE_RUNE in part:
        raise ChaincodeError(f"{what} {part!r} contains a reserved character")


def create_composite_key(object_type: str, attributes: Sequence[str]) -> str:
    """Fabric's composite key: the object type and attributes joined by NUL characters."""
    _check_attribute(object_type, "object type")
    out = [_COMPOSITE_NS, object_type, _COMPOSITE_NS]
    for attr in attributes:
        _check_attribute(attr, "key attribute")
        out.append(attr)
        out.append(_COMPOSITE_NS)
    return "".join(out)


def split_composite_key(key: str) -> tuple[str, list[str]]:
    """Inverse of :func:`create_composite_key`."""
    if not key.startswith(_COMPOSITE_NS) or not key.endswith(_COMPOSITE_NS):
        raise ChaincodeError(f"key {key!r} is not a composite key")
    parts = key[1:-1].split(_COMPOSITE_NS)
    return parts[0], parts[1:]


def partial_composite_range(object_type: str, attributes: Sequence[str]) -> tuple[str, str]:
    """The [start, end) key range holding every composite key with this prefix."""
    start = create_composite_key(object_type, attributes)
    return start, start + MAX_UNICODE_RUNE


class ChaincodeStub(Protocol):
    """What a transaction may ask of the ledger; mirrors Fabric's ``shim.ChaincodeStubInterface``.

    Reads see the committed state plus the transaction's own earlier writes (the embedded ledger) or
    the committed state only (Fabric: a read after a write in the same transaction sees the old
    value) — so the contract never reads a key it wrote in the same transaction.
    """

    def get_state(self, key: str) -> bytes | None:
        """The committed value of key, or None when absent."""
        ...

    def prefetch(self, keys: Sequence[str]) -> None:
        """A hint: this transaction will read ``keys`` (on every path that succeeds).

        A backend that can fetch several keys in one request (a Fabric >= 3.1 peer's
        ``GET_STATE_MULTIPLE``) may fetch them now so that the reads that follow cost nothing;
        any other may do nothing. It changes no answer and, because the keys are read anyway,
        not the transaction's read set.
        """
        ...

    def put_state(self, key: str, value: bytes) -> None:
        """Write key (visible to others once the transaction commits)."""
        ...

    def del_state(self, key: str) -> None:
        """Delete key."""
        ...

    def get_state_by_range(self, start_key: str, end_key: str) -> list[KeyValue]:
        """Every key in [start_key, end_key), in byte order."""
        ...

    def get_state_by_partial_composite_key(
        self, object_type: str, attributes: Sequence[str]
    ) -> list[KeyValue]:
        """Every composite key with this object type and leading attributes, in byte order."""
        ...

    def get_state_by_partial_composite_key_with_pagination(
        self, object_type: str, attributes: Sequence[str], page_size: int, bookmark: str
    ) -> tuple[list[KeyValue], str]:
        """One page of a partial composite-key scan and the bookmark of the next page.

        The bookmark is the key the next page starts at, or ``""`` when there is no next page
        (Fabric's convention). Fabric allows paginated queries only in read-only transactions.
        """
        ...

    def get_history_for_key(self, key: str) -> list[KeyModification]:
        """Every committed modification of key, oldest first."""
        ...

    def create_composite_key(self, object_type: str, attributes: Sequence[str]) -> str:
        """Same as the module-level :func:`create_composite_key`."""
        ...

    def split_composite_key(self, key: str) -> tuple[str, list[str]]:
        """Same as the module-level :func:`split_composite_key`."""
        ...

    def get_creator(self) -> tuple[str, bytes]:
        """The submitting client's (MSP id, X.509 certificate PEM), from the signed proposal."""
        ...

    def get_tx_timestamp(self) -> TxTimestamp:
        """The proposal's timestamp; the only clock a contract may use."""
        ...

    def get_tx_id(self) -> str:
        """The transaction id (hex sha256 of nonce ‖ creator)."""
        ...

    def get_channel_id(self) -> str:
        """The channel this transaction runs on."""
        ...

    def set_event(self, name: str, payload: bytes) -> None:
        """Set the transaction's chaincode event; Fabric keeps only one per transaction."""
        ...


ChaincodeFunction = Callable[[ChaincodeStub, str, list[bytes]], bytes]
"""What a backend runs per transaction: ``(stub, function, args) -> payload``, e.g. the contract's
``invoke``."""
