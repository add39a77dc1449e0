"""What the embedded ledger stores: its SQLite schema, transaction codes, the transaction and
block records and the hashes that chain them.

:mod:`ehrshare.ledger.store` writes these records, :mod:`ehrshare.ledger.replay` re-derives them
and :mod:`ehrshare.ledger.forge` (tests only) fakes them: all three must agree byte for byte, so
the format lives here once. This module must not open a database or judge a record's validity.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from dataclasses import dataclass

from ehrshare.identity import Identity
from ehrshare.ledger.envelope import Proposal, SignedProposal

__all__ = [
    "DUPLICATE_TXID",
    "GENESIS_PREV",
    "MVCC_READ_CONFLICT",
    "PHANTOM_READ_CONFLICT",
    "VALID",
    "EndorsedTransaction",
    "TxStatus",
    "is_corrupt_database",
    "parse_writes",
    "show_key",
]

VALID = "VALID"
MVCC_READ_CONFLICT = "MVCC_READ_CONFLICT"
PHANTOM_READ_CONFLICT = "PHANTOM_READ_CONFLICT"
DUPLICATE_TXID = "DUPLICATE_TXID"
GENESIS_PREV = b"\x00" * 32
_DB_NAME = "ledger.sqlite"
_SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS msp (
    msp_id TEXT PRIMARY KEY, ca_pem BLOB NOT NULL, added_block INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    ns TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
    blk INTEGER NOT NULL, txn INTEGER NOT NULL, PRIMARY KEY (ns, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    ns TEXT NOT NULL, key BLOB NOT NULL, blk INTEGER NOT NULL, txn INTEGER NOT NULL,
    tx_id TEXT NOT NULL, ts_s INTEGER NOT NULL, ts_ns INTEGER NOT NULL,
    value BLOB, is_delete INTEGER NOT NULL, PRIMARY KEY (ns, key, blk, txn)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    number INTEGER PRIMARY KEY, prev_hash BLOB NOT NULL, data_hash BLOB NOT NULL,
    hash BLOB NOT NULL, tx_count INTEGER NOT NULL, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transactions (
    tx_id TEXT PRIMARY KEY, blk INTEGER NOT NULL, txn INTEGER NOT NULL, code TEXT NOT NULL,
    chaincode TEXT NOT NULL, function TEXT NOT NULL, proposal BLOB NOT NULL,
    signature BLOB NOT NULL, writes BLOB NOT NULL, response BLOB NOT NULL,
    event_name TEXT, event_payload BLOB, tx_hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS block_sigs (number INTEGER PRIMARY KEY, signature BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS tx_position ON transactions (blk, txn);
CREATE INDEX IF NOT EXISTS tx_events ON transactions (chaincode, blk, txn)
    WHERE event_name IS NOT NULL AND code = 'VALID';
"""


def is_corrupt_database(exc: BaseException) -> bool:
    """Whether ``exc`` says the ledger's SQLite file is not a database or is damaged (not
    merely busy or locked)."""
    return isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorname", "") in (
        "SQLITE_CORRUPT",
        "SQLITE_NOTADB",
    )


@dataclass(frozen=True, slots=True)
class TxStatus:
    """Where and how a transaction committed."""

    tx_id: str
    code: str
    block_number: int

    @property
    def successful(self) -> bool:
        """True when the transaction's writes took effect."""
        return self.code == VALID


@dataclass(slots=True)
class EndorsedTransaction:
    """A simulated transaction: the signed proposal, its read/write set, result and event."""

    signed: SignedProposal
    proposal: Proposal
    creator: Identity
    reads: dict[tuple[str, bytes], tuple[int, int] | None]
    ranges: list[tuple[str, bytes, bytes, list[tuple[bytes, int, int]] | None]]
    writes: dict[tuple[str, bytes], bytes | None]
    result: bytes
    event: tuple[str, bytes] | None

    @property
    def tx_id(self) -> str:
        """The transaction id."""
        return self.proposal.tx_id

    def writes_json(self) -> bytes:
        """The write set as JSON (stored with the transaction and hashed into the block)."""
        rows = [
            [
                ns,
                base64.b64encode(key).decode(),
                None if v is None else base64.b64encode(v).decode(),
            ]
            for (ns, key), v in sorted(self.writes.items())
        ]
        return json.dumps(rows, separators=(",", ":")).encode()


def _tx_hash(
    signed: SignedProposal, writes: bytes, result: bytes, event: tuple[str, bytes] | None, code: str
) -> bytes:
    h = hashlib.sha256()
    for part in (
        signed.proposal_bytes,
        signed.signature,
        writes,
        result,
        b"" if event is None else event[0].encode(),
        b"" if event is None else event[1],
        code.encode(),
    ):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def parse_writes(writes: bytes) -> dict[tuple[str, bytes], bytes | None]:
    """Inverse of :meth:`EndorsedTransaction.writes_json`."""
    return {
        (str(ns), base64.b64decode(k)): None if v is None else base64.b64decode(v)
        for ns, k, v in json.loads(writes)
    }


def show_key(key: bytes) -> str:
    """A state key for messages: composite-key separators shown as '/'."""
    return repr(key.decode("utf-8", "replace").strip("\x00").replace("\x00", "/"))


def _block_hash(number: int, prev_hash: bytes, data_hash: bytes) -> bytes:
    return hashlib.sha256(number.to_bytes(8, "big") + prev_hash + data_hash).digest()
