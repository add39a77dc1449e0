"""Checking and simulating a proposal on the embedded ledger: the channel's membership rule
for a creator's certificate, and the chaincode stub that records a transaction's read/write set.

This module must not write to the database: simulation reads committed state and keeps its own
writes in memory until :meth:`ehrshare.ledger.store.EmbeddedLedger.commit`.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from ehrshare.identity import Identity
from ehrshare.ledger.envelope import Proposal
from ehrshare_chaincode.stub import (
    ChaincodeError,
    KeyModification,
    KeyValue,
    TxTimestamp,
    create_composite_key,
    partial_composite_range,
    split_composite_key,
)

__all__ = ["ProposalRejected"]


class ProposalRejected(Exception):
    """The proposal failed before or during simulation (bad signature, chaincode error, ...)."""

    def __init__(
        self,
        message: str,
        tx_id: str = "",
        *,
        chaincode_error: bool = False,
        creator_refused: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.tx_id = tx_id
        self.chaincode_error = chaincode_error
        self.creator_refused = creator_refused
        """True when the channel's MSPs do not accept the creator's certificate."""


_NODE_OUS = frozenset({"client", "admin", "peer", "orderer"})


@functools.lru_cache(maxsize=4096)
def _chains_to(cert_pem: bytes, ca_pem: bytes) -> str | None:
    """None when cert_pem is a member (non-CA) certificate issued by ca_pem, else the reason."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        return "creator certificate is not valid pem"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "creator certificate was not issued by its msp's ca"
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "creator certificate is a ca certificate"
    except x509.ExtensionNotFound:
        pass
    # Fabric's MSP with NodeOUs classifies every identity by one of these OUs and refuses the
    # rest; so does this ledger. It is what keeps a member's TLS client certificate (OU "tls",
    # its own key) from signing transactions in the member's name.
    ous = {
        str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    }
    if not ous & _NODE_OUS:
        return (
            "creator certificate has no node ou (client, admin, peer or orderer); "
            "a tls client certificate cannot sign transactions"
        )
    return None


class _SimulationStub:
    """The chaincode stub during simulation: committed state plus this transaction's own writes."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        ns: str,
        proposal: Proposal,
        creator: Identity,
        check: Callable[[str, bytes, bytes, int, int], None] | None = None,
    ) -> None:
        self._conn = conn
        self._check = check
        self._ns = ns
        self._proposal = proposal
        self._creator = creator
        self.reads: dict[tuple[str, bytes], tuple[int, int] | None] = {}
        self.ranges: list[tuple[str, bytes, bytes, list[tuple[bytes, int, int]] | None]] = []
        self.writes: dict[tuple[str, bytes], bytes | None] = {}
        self.event: tuple[str, bytes] | None = None

    # state
    def prefetch(self, keys: Sequence[str]) -> None:
        """Reads here are local: nothing to fetch ahead."""

    def get_state(self, key: str) -> bytes | None:
        k = self._key(key)
        if (self._ns, k) in self.writes:
            return self.writes[(self._ns, k)]
        row = self._conn.execute(
            "SELECT value, blk, txn FROM state WHERE ns = ? AND key = ?", (self._ns, k)
        ).fetchone()
        if (self._ns, k) not in self.reads:
            self.reads[(self._ns, k)] = None if row is None else (row[1], row[2])
        if row is None:
            return None
        if self._check is not None:
            self._check(self._ns, k, bytes(row[0]), int(row[1]), int(row[2]))
        return bytes(row[0])

    def put_state(self, key: str, value: bytes) -> None:
        k = self._key(key)
        # Fabric treats an empty value as a delete; keep the same semantics.
        self.writes[(self._ns, k)] = bytes(value) if value else None

    def del_state(self, key: str) -> None:
        self.writes[(self._ns, self._key(key))] = None

    def _key(self, key: str) -> bytes:
        if not key:
            raise ChaincodeError("key must not be empty")
        return key.encode("utf-8")

    def _scan(self, start: bytes, end: bytes, limit: int | None) -> list[KeyValue]:
        sql = "SELECT key, value, blk, txn FROM state WHERE ns = ? AND key >= ? AND key < ? "
        sql += "ORDER BY key" + ("" if limit is None else f" LIMIT {int(limit)}")
        rows = self._conn.execute(sql, (self._ns, start, end)).fetchall()
        # Paginated scans are only allowed in queries (as in Fabric), so they are not validated.
        seen = None if limit is not None else [(bytes(r[0]), r[2], r[3]) for r in rows]
        if self._check is not None:
            for r in rows:
                self._check(self._ns, bytes(r[0]), bytes(r[1]), int(r[2]), int(r[3]))
        self.ranges.append((self._ns, start, end, seen))
        merged = {bytes(r[0]): bytes(r[1]) for r in rows}
        for (ns, k), v in self.writes.items():
            if ns == self._ns and start <= k < end:
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
        return [KeyValue(k.decode("utf-8"), v) for k, v in sorted(merged.items())]

    def get_state_by_range(self, start_key: str, end_key: str) -> list[KeyValue]:
        return self._scan(start_key.encode(), end_key.encode(), None)

    def get_state_by_partial_composite_key(
        self, object_type: str, attributes: Sequence[str]
    ) -> list[KeyValue]:
        start, end = partial_composite_range(object_type, attributes)
        return self._scan(start.encode(), end.encode(), None)

    def get_state_by_partial_composite_key_with_pagination(
        self, object_type: str, attributes: Sequence[str], page_size: int, bookmark: str
    ) -> tuple[list[KeyValue], str]:
        if page_size < 1:
            raise ChaincodeError("page size must be at least 1")
        start, end = partial_composite_range(object_type, attributes)
        if bookmark:
            if not start <= bookmark < end:
                raise ChaincodeError("bookmark does not belong to this query")
            start = bookmark
        rows = self._scan(start.encode(), end.encode(), page_size + 1)
        if len(rows) > page_size:
            return rows[:page_size], rows[page_size].key
        return rows, ""

    def get_history_for_key(self, key: str) -> list[KeyModification]:
        rows = self._conn.execute(
            "SELECT tx_id, ts_s, ts_ns, value, is_delete FROM history "
            "WHERE ns = ? AND key = ? ORDER BY blk, txn",
            (self._ns, self._key(key)),
        ).fetchall()
        return [
            KeyModification(
                r[0], b"" if r[3] is None else bytes(r[3]), TxTimestamp(r[1], r[2]), bool(r[4])
            )
            for r in rows
        ]

    def create_composite_key(self, object_type: str, attributes: Sequence[str]) -> str:
        key: str = create_composite_key(object_type, attributes)
        return key

    def split_composite_key(self, key: str) -> tuple[str, list[str]]:
        parts: tuple[str, list[str]] = split_composite_key(key)
        return parts

    def get_creator(self) -> tuple[str, bytes]:
        return self._creator.msp_id, self._creator.credentials

    def get_tx_timestamp(self) -> TxTimestamp:
        return TxTimestamp(self._proposal.timestamp_seconds, self._proposal.timestamp_nanos)

    def get_tx_id(self) -> str:
        return self._proposal.tx_id

    def get_channel_id(self) -> str:
        return self._proposal.channel

    def set_event(self, name: str, payload: bytes) -> None:
        if not name:
            raise ChaincodeError("event name must not be empty")
        self.event = (name, bytes(payload))
