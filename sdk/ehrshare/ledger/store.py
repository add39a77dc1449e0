"""The embedded ledger: SQLite world state, key history and a hash-chained block log.

It runs the chaincode in-process the way a Fabric peer would: a signed proposal is checked
(signature, certificate chain to a channel member's CA, unused transaction id), simulated against
committed state into a read/write set, then validated (MVCC: every key and range it read still has
the version it saw) and committed with its block, key history and chaincode event in *one* SQLite
transaction. Every block is signed by the ledger's ordering key (:mod:`ehrshare.ledger.ordering`);
every state row a committing transaction reads is checked against the signed write it names;
:meth:`EmbeddedLedger.verify` replays the whole chain (:mod:`ehrshare.ledger.replay`). A
transaction that fails in the chaincode leaves nothing behind; a process killed mid-commit
leaves the last complete block (SQLite's WAL discards the unfinished transaction on reopen).

Durability: WAL mode with ``synchronous=NORMAL`` by default. A commit is in the WAL file (the OS
page cache) when ``COMMIT`` returns, so killing the process — even with SIGKILL — loses nothing
committed; only an operating-system crash or power loss can lose the last few commits.
``synchronous="FULL"`` fsyncs every commit and survives those too, at a latency cost. Concurrency:
one writer at a time (``BEGIN IMMEDIATE``), also across processes sharing the directory; the chain
tip is read inside the write transaction, so block numbers and the hash chain never fork; readers
see a consistent snapshot. :meth:`EmbeddedLedger.submit` simulates inside that write transaction
and so never conflicts; the fine-grained flow (endorse now, commit later) simulates outside it and
MVCC validation then marks a stale transaction ``MVCC_READ_CONFLICT``, exactly as Fabric would.
Proposals stamped further than ``max_clock_skew_s`` (default 300 s) from the ledger's clock are
refused.

What this module must not do: interpret chaincode data (it stores bytes), or let a chaincode write
reach the database without going through :meth:`EmbeddedLedger.commit`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from ehrshare.closing import Closing
from ehrshare.faults import fault_point
from ehrshare.identity import Identity, Signer
from ehrshare.ledger.api import ChaincodeEvent
from ehrshare.ledger.envelope import Proposal, SignedProposal, open_proposal
from ehrshare.ledger.errors import LedgerCorrupt, LedgerIntegrityError, OrderingKeyError
from ehrshare.ledger.ordering import (
    OrderingIdentity,
    block_message,
    genesis_data_hash,
    load_ordering_key,
    new_ordering_identity,
    write_ordering_key,
)
from ehrshare_chaincode import contract as ehr_contract
from ehrshare_chaincode.stub import (
    ChaincodeError,
    ChaincodeFunction,
    KeyModification,
    KeyValue,
    TxTimestamp,
    create_composite_key,
    partial_composite_range,
    split_composite_key,
)

__all__ = [
    "DEFAULT_MAX_CLOCK_SKEW_S",
    "VALID",
    "ChaincodeFunction",
    "EmbeddedLedger",
    "EndorsedTransaction",
    "LedgerIntegrityError",
    "ProposalRejected",
    "TxStatus",
]

logger = logging.getLogger(__name__)

VALID = "VALID"
MVCC_READ_CONFLICT = "MVCC_READ_CONFLICT"
PHANTOM_READ_CONFLICT = "PHANTOM_READ_CONFLICT"
DUPLICATE_TXID = "DUPLICATE_TXID"
GENESIS_PREV = b"\x00" * 32
DEFAULT_MAX_CLOCK_SKEW_S = 300
_DB_NAME = "ledger.sqlite"
_VERIFIED_KEPT = 4096  # verified blocks and write sets a process remembers (then starts over)
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


@dataclass(slots=True)
class _Listeners:
    callbacks: list[Callable[[ChaincodeEvent], None]] = field(default_factory=list)


class EmbeddedLedger(Closing):
    """One channel's ledger in a directory. Open it with :meth:`open`; close it when done.

    Thread-safe within a process (one lock around the connection); several processes may open the
    same directory (SQLite serialises writers, a submit simulates under the write lock, MVCC
    catches stale simulations of the fine-grained flow; events of the other processes are seen by
    polling).
    """

    def __init__(self, directory: Path, conn: sqlite3.Connection, channel: str) -> None:
        self.directory = directory
        self.channel = channel
        self._conn = conn
        self._lock = threading.RLock()
        self._committed = threading.Condition(self._lock)
        self._chaincodes: dict[str, ChaincodeFunction] = {
            ehr_contract.CONTRACT_NAME: ehr_contract.invoke
        }
        self._listeners = _Listeners()
        self._closed = False
        self.max_clock_skew_s: int | None = DEFAULT_MAX_CLOCK_SKEW_S
        self._clock: Callable[[], int] = time.time_ns
        self.check_reads = True
        """Check every state row a transaction reads against its write in a signed block."""
        self._ordering: OrderingIdentity | None = None
        self._orderer: Signer | None = None
        # Verified facts, kept for the life of this process: block number -> its verified hash,
        # and (block, txn) -> the write set of a transaction whose hash that block covers.
        self._signed_blocks: dict[int, bytes] = {}
        self._verified_writes: dict[tuple[int, int], dict[tuple[str, bytes], bytes | None]] = {}

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path | str,
        *,
        channel: str = "ehrshare",
        synchronous: str = "NORMAL",
        max_clock_skew_s: int | None = DEFAULT_MAX_CLOCK_SKEW_S,
        clock: Callable[[], int] | None = None,
        check_reads: bool = True,
        create: bool = True,
    ) -> EmbeddedLedger:
        """Open (creating if needed) the ledger in ``directory`` for ``channel``.

        ``create=False`` opens only an existing ledger database: a missing directory or
        ``ledger.sqlite`` raises :class:`FileNotFoundError` and nothing is created (a consortium
        opens its ledger this way, after :mod:`ehrshare.volumes` checked its marker).

        The contract decides expiry by the proposal's timestamp, which the client sets, so the
        ledger refuses proposals whose timestamp is more than ``max_clock_skew_s`` (default
        300 s) from its own ``clock`` (nanoseconds since the epoch; default the machine's):
        otherwise a client could backdate a request past its grant's expiry. Tests and demos
        that drive time with a manual clock pass that same clock here (as
        :class:`~ehrshare.ledger.sandbox.Sandbox` does) rather than switching the check off;
        ``None`` switches it off and is only for replaying old proposals.

        A new ledger gets its ordering key and certificate (:mod:`ehrshare.ledger.ordering`)
        here. ``check_reads`` (default on) makes every transaction check each state row it
        reads against the write of that key in the signed block the row names, so a hand-edited
        value fails the transaction with :class:`LedgerIntegrityError` (see :meth:`verify` for
        the complete check); off only to measure what the check costs.
        """
        if max_clock_skew_s is not None and (
            isinstance(max_clock_skew_s, bool) or max_clock_skew_s < 0
        ):
            raise ValueError(
                f"max_clock_skew_s must be a non-negative number of seconds or None, "
                f"got {max_clock_skew_s!r}"
            )
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        path = Path(directory)
        if create:
            path.mkdir(parents=True, exist_ok=True)
            target: str | Path = path / _DB_NAME
        elif not (path / _DB_NAME).is_file():
            raise FileNotFoundError(f"no ledger database {path / _DB_NAME}")
        else:
            # mode=rw: SQLite itself refuses to create the file should it vanish meanwhile.
            target = f"{(path / _DB_NAME).resolve().as_uri()}?mode=rw"
        conn = sqlite3.connect(
            target, isolation_level=None, check_same_thread=False, timeout=30.0, uri=not create
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.executescript(_SCHEMA)
            ledger = cls(path, conn, channel)
            ledger.max_clock_skew_s = max_clock_skew_s
            ledger.check_reads = check_reads
            if clock is not None:
                ledger._clock = clock
            ledger._init_meta(channel)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if is_corrupt_database(exc):
                raise LedgerCorrupt(
                    f"the ledger database {path / _DB_NAME} is damaged ({exc}); nothing was "
                    "read or changed — restore the ledger directory from a backup"
                ) from None
            raise
        except BaseException:
            conn.close()
            raise
        return ledger

    def _init_meta(self, channel: str) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                rows = dict(self._conn.execute("SELECT name, value FROM meta").fetchall())
                if not rows:
                    # The key file is written before the genesis block commits: a crash in
                    # between leaves no genesis, and the next open makes a new key over it.
                    ordering, signer = new_ordering_identity()
                    write_ordering_key(self.directory, signer)
                    fault_point("ledger.init.after_key")
                    self._conn.executemany(
                        "INSERT INTO meta (name, value) VALUES (?, ?)",
                        [
                            ("schema", _SCHEMA_VERSION),
                            ("channel", channel),
                            ("orderer_ca", ordering.ca_pem.decode()),
                            ("orderer_cert", ordering.cert_pem.decode()),
                        ],
                    )
                    data_hash = genesis_data_hash(channel, ordering)
                    genesis = _block_hash(0, GENESIS_PREV, data_hash)
                    self._conn.execute(
                        "INSERT INTO blocks VALUES (0, ?, ?, ?, 0, 'genesis')",
                        (GENESIS_PREV, data_hash, genesis),
                    )
                    self._ordering, self._orderer = ordering, signer
                    self._sign_block(0, genesis)
                    rows = dict(self._conn.execute("SELECT name, value FROM meta").fetchall())
                elif rows.get("channel") != channel:
                    raise ValueError(
                        f"ledger in {self.directory} is for channel {rows.get('channel')!r}, "
                        f"not {channel!r}"
                    )
                elif rows.get("schema") != _SCHEMA_VERSION:
                    raise ValueError(f"ledger schema {rows.get('schema')!r} is not supported")
                if "orderer_cert" not in rows or "orderer_ca" not in rows:
                    raise ValueError(f"ledger in {self.directory} has no ordering identity")
                self._ordering = OrderingIdentity(
                    str(rows["orderer_ca"]).encode(), str(rows["orderer_cert"]).encode()
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    @property
    def ordering(self) -> OrderingIdentity:
        """The ordering identity as this ledger's database states it (verify before trusting)."""
        assert self._ordering is not None
        return self._ordering

    def _sign_block(self, number: int, block_hash: bytes) -> None:
        """Sign a block being written; the caller holds the write transaction."""
        if self._orderer is None:
            try:
                self._orderer = load_ordering_key(self.directory, self.ordering)
            except ValueError as exc:
                raise OrderingKeyError(str(exc)) from None
        signature = self._orderer.sign(block_message(self.channel, number, block_hash))
        self._conn.execute("INSERT INTO block_sigs VALUES (?, ?)", (number, signature))

    def mark_consortium(self, consortium_id: str) -> None:
        """Record which consortium this ledger belongs to (``consortium init`` does, once)."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO meta (name, value) VALUES ('consortium', ?)", (consortium_id,)
            )

    def close(self) -> None:
        """Close the database; wakes event iterators so they can finish."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._committed.notify_all()
            self._conn.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    # --- channel configuration ---------------------------------------------------------------

    def add_organization(self, msp_id: str, ca_certificate_pem: bytes) -> int:
        """Admit an organisation (its root CA) to the channel; a config block records it."""
        x509.load_pem_x509_certificate(ca_certificate_pem)  # refuse garbage early
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if self._conn.execute("SELECT 1 FROM msp WHERE msp_id = ?", (msp_id,)).fetchone():
                    raise ValueError(f"organisation {msp_id} is already a channel member")
                number, prev = self._tip()
                number += 1
                data_hash = hashlib.sha256(
                    b"config:" + msp_id.encode() + b"\x00" + ca_certificate_pem
                ).digest()
                self._conn.execute(
                    "INSERT INTO msp VALUES (?, ?, ?)", (msp_id, ca_certificate_pem, number)
                )
                block_hash = _block_hash(number, prev, data_hash)
                self._conn.execute(
                    "INSERT INTO blocks VALUES (?, ?, ?, ?, 0, 'config')",
                    (number, prev, data_hash, block_hash),
                )
                self._sign_block(number, block_hash)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._committed.notify_all()
            return number

    def organizations(self) -> dict[str, bytes]:
        """MSP id → root CA PEM of every member organisation."""
        with self._lock:
            rows = self._conn.execute("SELECT msp_id, ca_pem FROM msp ORDER BY msp_id").fetchall()
        return {r[0]: bytes(r[1]) for r in rows}

    def install_chaincode(self, name: str, function: ChaincodeFunction) -> None:
        """Make a chaincode callable on this ledger (in-process code; not persisted)."""
        self._chaincodes[name] = function

    # --- endorsement ---------------------------------------------------------------------------

    def _check_proposal(self, signed: SignedProposal) -> tuple[Proposal, Identity]:
        try:
            proposal, creator = open_proposal(signed)
        except ValueError as exc:
            raise ProposalRejected(str(exc)) from None
        if proposal.channel != self.channel:
            raise ProposalRejected(f"channel {proposal.channel} does not exist", proposal.tx_id)
        if self.max_clock_skew_s is not None:
            now = self._clock() // 1_000_000_000
            skew = proposal.timestamp_seconds - now
            if abs(skew) > self.max_clock_skew_s:
                direction = "ahead of" if skew > 0 else "behind"
                raise ProposalRejected(
                    f"proposal timestamp {proposal.timestamp_seconds} is {abs(skew)} s "
                    f"{direction} the ledger's clock ({now}); the limit is "
                    f"{self.max_clock_skew_s} s: check the client's clock",
                    proposal.tx_id,
                )
        if proposal.chaincode not in self._chaincodes:
            raise ProposalRejected(
                f"chaincode {proposal.chaincode} is not installed", proposal.tx_id
            )
        row = self._conn.execute(
            "SELECT ca_pem FROM msp WHERE msp_id = ?", (creator.msp_id,)
        ).fetchone()
        if row is None:
            raise ProposalRejected(
                f"organisation {creator.msp_id} is not a channel member",
                proposal.tx_id,
                creator_refused=True,
            )
        problem = _chains_to(creator.credentials, bytes(row[0]))
        if problem is not None:
            raise ProposalRejected(problem, proposal.tx_id, creator_refused=True)
        return proposal, creator

    def _simulate(self, signed: SignedProposal, *, check: bool = True) -> EndorsedTransaction:
        proposal, creator = self._check_proposal(signed)
        stub = _SimulationStub(
            self._conn,
            proposal.chaincode,
            proposal,
            creator,
            self._check_read if check and self.check_reads else None,
        )
        try:
            result = self._chaincodes[proposal.chaincode](
                stub, proposal.function, list(proposal.args)
            )
        except ChaincodeError as exc:
            raise ProposalRejected(exc.message, proposal.tx_id, chaincode_error=True) from None
        return EndorsedTransaction(
            signed, proposal, creator, stub.reads, stub.ranges, stub.writes, result, stub.event
        )

    def endorse(self, signed: SignedProposal, *, query: bool = False) -> EndorsedTransaction:
        """Check and simulate a proposal against a snapshot of committed state; writes nothing.

        A ``query`` (an evaluation, never committed) skips the per-read state check: what it
        returns goes to its caller only, and :meth:`verify` is the check for stored data.
        """
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                endorsed = self._simulate(signed, check=not query)
                if self._conn.execute(
                    "SELECT 1 FROM transactions WHERE tx_id = ?", (endorsed.tx_id,)
                ).fetchone():
                    raise ProposalRejected(
                        f"transaction {endorsed.tx_id} was already submitted", endorsed.tx_id
                    )
            finally:
                self._conn.execute("ROLLBACK")
        return endorsed

    def evaluate(self, signed: SignedProposal) -> bytes:
        """Run a query: check and simulate, return the result, discard the writes."""
        return self.endorse(signed, query=True).result

    # --- checked reads -----------------------------------------------------------------------

    def _check_read(self, ns: str, key: bytes, value: bytes, blk: int, txn: int) -> None:
        """Refuse a state row that is not what transaction (blk, txn) wrote for its key in a
        block the ordering key signed. Cheap: one block signature per block per process, one
        transaction hash and one write-set parse per transaction, both cached once verified.

        Not caught here (:meth:`verify` catches it): a row set back to an earlier signed write
        of the same key, with the later history rows deleted; a deleted row.
        """
        writes = self._verified_writes.get((blk, txn))
        if writes is None:
            writes = self._verified_tx_writes(ns, key, blk, txn)
        if (ns, key) not in writes or writes[(ns, key)] != value:
            raise LedgerIntegrityError(
                f"world state key {show_key(key)} does not hold what block {blk} transaction "
                f"{txn} wrote: the ledger database was edited; run 'ehrshare ledger verify'",
                block=blk,
                txn=txn,
            )

    def _verified_tx_writes(
        self, ns: str, key: bytes, blk: int, txn: int
    ) -> dict[tuple[str, bytes], bytes | None]:
        row = self._conn.execute(
            "SELECT proposal, signature, writes, response, event_name, event_payload, code, "
            "tx_hash FROM transactions WHERE blk = ? AND txn = ?",
            (blk, txn),
        ).fetchone()
        where = f"world state key {show_key(key)} names block {blk} transaction {txn}"
        if row is None or row[6] != VALID:
            raise LedgerIntegrityError(
                f"{where}, which is not a valid transaction: the ledger database was edited",
                block=blk,
                txn=txn,
            )
        event = None if row[4] is None else (str(row[4]), bytes(row[5]))
        tx_hash = _tx_hash(
            SignedProposal(bytes(row[0]), bytes(row[1])), bytes(row[2]), bytes(row[3]), event, VALID
        )
        if tx_hash != bytes(row[7]):
            raise LedgerIntegrityError(
                f"{where}, whose stored content does not match its hash", block=blk, txn=txn
            )
        self._check_signed_block(blk, where)
        hashes = [
            bytes(r[0])
            for r in self._conn.execute(
                "SELECT tx_hash FROM transactions WHERE blk = ? ORDER BY txn", (blk,)
            )
        ]
        data = hashlib.sha256(b"".join(hashes)).digest()
        if tx_hash not in hashes or data != self._signed_data_hash(blk):
            raise LedgerIntegrityError(
                f"{where}, which the signed block does not contain", block=blk, txn=txn
            )
        writes = parse_writes(bytes(row[2]))
        if len(self._verified_writes) >= _VERIFIED_KEPT:
            self._verified_writes.clear()
        self._verified_writes[(blk, txn)] = writes
        return writes

    def _signed_data_hash(self, number: int) -> bytes:
        row = self._conn.execute(
            "SELECT data_hash FROM blocks WHERE number = ?", (number,)
        ).fetchone()
        return b"" if row is None else bytes(row[0])

    def _check_signed_block(self, number: int, where: str) -> None:
        row = self._conn.execute(
            "SELECT b.prev_hash, b.data_hash, b.hash, s.signature FROM blocks b "
            "LEFT JOIN block_sigs s ON s.number = b.number WHERE b.number = ?",
            (number,),
        ).fetchone()
        if row is None or row[3] is None:
            raise LedgerIntegrityError(f"{where}, which is missing or unsigned", block=number)
        block_hash = _block_hash(number, bytes(row[0]), bytes(row[1]))
        if self._signed_blocks.get(number) == block_hash:
            return
        if block_hash != bytes(row[2]) or not self.ordering.verify_block(
            self.channel, number, block_hash, bytes(row[3])
        ):
            raise LedgerIntegrityError(
                f"{where}, whose block signature does not verify", block=number
            )
        if len(self._signed_blocks) >= _VERIFIED_KEPT:
            self._signed_blocks.clear()
        self._signed_blocks[number] = block_hash

    # --- commit --------------------------------------------------------------------------------

    def _tip(self) -> tuple[int, bytes]:
        row = self._conn.execute(
            "SELECT number, hash FROM blocks ORDER BY number DESC LIMIT 1"
        ).fetchone()
        return int(row[0]), bytes(row[1])

    def _validate(self, tx: EndorsedTransaction) -> str:
        if self._conn.execute("SELECT 1 FROM transactions WHERE tx_id = ?", (tx.tx_id,)).fetchone():
            return DUPLICATE_TXID
        for (ns, key), version in tx.reads.items():
            row = self._conn.execute(
                "SELECT blk, txn FROM state WHERE ns = ? AND key = ?", (ns, key)
            ).fetchone()
            now = None if row is None else (row[0], row[1])
            if now != version:
                return MVCC_READ_CONFLICT
        for ns, start, end, seen in tx.ranges:
            if seen is None:
                continue
            rows = self._conn.execute(
                "SELECT key, blk, txn FROM state WHERE ns = ? AND key >= ? AND key < ? "
                "ORDER BY key",
                (ns, start, end),
            ).fetchall()
            if [(bytes(r[0]), r[1], r[2]) for r in rows] != seen:
                return PHANTOM_READ_CONFLICT
        return VALID

    def commit(self, transactions: Sequence[EndorsedTransaction]) -> list[TxStatus]:
        """Order ``transactions`` into one block and commit it atomically.

        Each transaction is validated against the state left by the valid transactions before it
        in the block; an invalid one is recorded with its code and its writes are dropped.
        """
        if not transactions:
            raise ValueError("a block needs at least one transaction")
        return self._in_write_transaction(lambda: list(transactions))

    def _in_write_transaction(
        self, produce: Callable[[], list[EndorsedTransaction]]
    ) -> list[TxStatus]:
        """Run ``produce`` and write its transactions as the next block, all inside one SQLite
        write transaction (``BEGIN IMMEDIATE``).

        Holding SQLite's write lock is what makes several processes safe on one directory: the
        chain tip is read inside it, so block numbers and the hash chain cannot fork, and MVCC
        validation compares against versions no other writer can change meanwhile.
        """
        with self._lock:
            if self._closed:
                raise ValueError("ledger is closed")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                statuses, events, written = self._write_block(produce())
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            # What this process just signed and committed needs no re-verification when read
            # back: only once COMMIT returned (a rolled-back block must not be remembered).
            self._remember_verified(*written)
            self._committed.notify_all()
            callbacks = list(self._listeners.callbacks)
        for event in events:
            for callback in callbacks:
                try:
                    callback(event)
                except Exception:  # a listener's bug must not look like a failed commit
                    logger.exception("chaincode event listener failed")
        return statuses

    def _write_block(
        self, transactions: Sequence[EndorsedTransaction]
    ) -> tuple[
        list[TxStatus],
        list[ChaincodeEvent],
        tuple[int, bytes, dict[int, dict[tuple[str, bytes], bytes | None]]],
    ]:
        """Validate and write one block; the caller holds the write transaction. Returns the
        statuses, the events, and (number, hash, valid write sets by position) of the block."""
        statuses: list[TxStatus] = []
        events: list[ChaincodeEvent] = []
        valid_writes: dict[int, dict[tuple[str, bytes], bytes | None]] = {}
        number, prev = self._tip()
        number += 1
        data = hashlib.sha256()
        for txn, tx in enumerate(transactions):
            code = self._validate(tx)
            writes = tx.writes_json()
            tx_hash = _tx_hash(tx.signed, writes, tx.result, tx.event, code)
            data.update(tx_hash)
            if code == VALID:
                self._apply(tx, number, txn)
                valid_writes[txn] = dict(tx.writes)
            self._conn.execute(
                "INSERT INTO transactions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    tx.tx_id if code != DUPLICATE_TXID else f"{tx.tx_id}#{number}.{txn}",
                    number,
                    txn,
                    code,
                    tx.proposal.chaincode,
                    tx.proposal.function,
                    tx.signed.proposal_bytes,
                    tx.signed.signature,
                    writes,
                    tx.result,
                    None if tx.event is None else tx.event[0],
                    None if tx.event is None else tx.event[1],
                    tx_hash,
                ),
            )
            statuses.append(TxStatus(tx.tx_id, code, number))
            if code == VALID and tx.event is not None:
                events.append(
                    ChaincodeEvent(
                        number, tx.tx_id, tx.proposal.chaincode, tx.event[0], tx.event[1]
                    )
                )
        data_hash = data.digest()
        block_hash = _block_hash(number, prev, data_hash)
        self._conn.execute(
            "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, 'tx')",
            (number, prev, data_hash, block_hash, len(transactions)),
        )
        self._sign_block(number, block_hash)
        return statuses, events, (number, block_hash, valid_writes)

    def _remember_verified(
        self,
        number: int,
        block_hash: bytes,
        writes: dict[int, dict[tuple[str, bytes], bytes | None]],
    ) -> None:
        if len(self._verified_writes) + len(writes) > _VERIFIED_KEPT:
            self._verified_writes.clear()
        if len(self._signed_blocks) >= _VERIFIED_KEPT:
            self._signed_blocks.clear()
        self._signed_blocks[number] = block_hash
        for txn, w in writes.items():
            self._verified_writes[(number, txn)] = w

    def _apply(self, tx: EndorsedTransaction, number: int, txn: int) -> None:
        ts_s, ts_ns = tx.proposal.timestamp_seconds, tx.proposal.timestamp_nanos
        for (ns, key), value in sorted(tx.writes.items()):
            if value is None:
                self._conn.execute("DELETE FROM state WHERE ns = ? AND key = ?", (ns, key))
            else:
                self._conn.execute(
                    "INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?, ?)",
                    (ns, key, value, number, txn),
                )
            self._conn.execute(
                "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ns, key, number, txn, tx.tx_id, ts_s, ts_ns, value, int(value is None)),
            )

    def submit(self, signed: SignedProposal) -> tuple[EndorsedTransaction, TxStatus]:
        """Endorse and commit one proposal in its own block, simulating *inside* the write
        transaction: no other thread or process can commit in between, so a submit never fails
        MVCC, even with several processes sharing the directory."""
        endorsed: list[EndorsedTransaction] = []

        def simulate() -> list[EndorsedTransaction]:
            tx = self._simulate(signed)
            if self._conn.execute(
                "SELECT 1 FROM transactions WHERE tx_id = ?", (tx.tx_id,)
            ).fetchone():
                raise ProposalRejected(f"transaction {tx.tx_id} was already submitted", tx.tx_id)
            endorsed.append(tx)
            return endorsed

        (status,) = self._in_write_transaction(simulate)
        return endorsed[0], status

    # --- reading the block log -----------------------------------------------------------------

    def height(self) -> int:
        """Number of blocks (the next block's number)."""
        with self._lock:
            return self._tip()[0] + 1

    def transaction_status(self, tx_id: str) -> TxStatus | None:
        """The commit status of a transaction, or None if it never reached a block."""
        with self._lock:
            row = self._conn.execute(
                "SELECT code, blk FROM transactions WHERE tx_id = ?", (tx_id,)
            ).fetchone()
        return None if row is None else TxStatus(tx_id, row[0], int(row[1]))

    def events_after(
        self, chaincode: str, block: int, txn: int, limit: int = 100
    ) -> list[tuple[int, ChaincodeEvent]]:
        """Valid chaincode events strictly after position (block, txn), with their txn index."""
        with self._lock:
            if self._closed:
                return []
            rows = self._conn.execute(
                "SELECT blk, txn, tx_id, event_name, event_payload FROM transactions "
                "WHERE chaincode = ? AND event_name IS NOT NULL AND code = 'VALID' "
                "AND (blk > ? OR (blk = ? AND txn > ?)) ORDER BY blk, txn LIMIT ?",
                (chaincode, block, block, txn, limit),
            ).fetchall()
        return [
            (int(r[1]), ChaincodeEvent(int(r[0]), r[2], chaincode, r[3], bytes(r[4]))) for r in rows
        ]

    def tx_index(self, tx_id: str) -> tuple[int, int] | None:
        """(block, position in block) of a transaction."""
        with self._lock:
            row = self._conn.execute(
                "SELECT blk, txn FROM transactions WHERE tx_id = ?", (tx_id,)
            ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def wait_for_commit(self, timeout: float) -> None:
        """Block until a commit in this process (or the timeout; other processes are polled)."""
        with self._committed:
            if not self._closed:
                self._committed.wait(timeout)

    def add_listener(self, callback: Callable[[ChaincodeEvent], None]) -> Callable[[], None]:
        """Call ``callback`` with every chaincode event committed by this process.

        Returns a function that removes the listener. Use the event iterator to also see commits
        from other processes and to resume from a checkpoint.
        """
        with self._lock:
            self._listeners.callbacks.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._listeners.callbacks:
                    self._listeners.callbacks.remove(callback)

        return remove

    # --- integrity -----------------------------------------------------------------------------

    def state_items(self, ns: str) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of a chaincode's world state in key order (for audits and tests)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, value FROM state WHERE ns = ? ORDER BY key", (ns,)
            ).fetchall()
        for r in rows:
            yield bytes(r[0]), bytes(r[1])

    def state_digest(self) -> str:
        """sha256 over the whole world state; equal digests mean equal states."""
        h = hashlib.sha256()
        with self._lock:
            rows = self._conn.execute(
                "SELECT ns, key, value FROM state ORDER BY ns, key"
            ).fetchall()
        for ns, key, value in rows:
            for part in (ns.encode(), bytes(key), bytes(value)):
                h.update(len(part).to_bytes(8, "big"))
                h.update(part)
        return h.hexdigest()

    def head(self) -> tuple[int, bytes]:
        """(height, hash of the last block) as stored; what a witness signs."""
        with self._lock:
            number, block_hash = self._tip()
        return number + 1, block_hash

    def block_hash(self, number: int) -> bytes | None:
        """The stored hash of block ``number``, or None beyond the tip."""
        with self._lock:
            row = self._conn.execute(
                "SELECT hash FROM blocks WHERE number = ?", (number,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def verify(self, *, against: Sequence[Any] = ()) -> dict[str, Any]:
        """Check the whole ledger; raise :class:`LedgerIntegrityError` naming the first bad
        block (and transaction) when anything differs from what was committed.

        Every block's link, hash and ordering signature; every transaction's hash and client
        signature (against the organisation CAs the config blocks admitted); a replay of every
        valid transaction through the same chaincode from genesis, whose write sets, responses,
        events, key history and world state must be the stored ones
        (:mod:`ehrshare.ledger.replay`). ``against``: witnesses' signed chain heads
        (:class:`~ehrshare.ledger.witness.SignedHead`); a chain shorter than one, or with
        another block at its height, fails — the only check that catches a deleted tail or a
        chain re-signed with the ordering key.
        """
        from ehrshare.ledger.replay import replay_ledger
        from ehrshare.ledger.witness import check_head

        with self._lock:
            self._conn.execute("BEGIN")
            try:
                report = replay_ledger(self._conn, self.channel, self._chaincodes)
                orgs = {
                    r[0]: bytes(r[1]) for r in self._conn.execute("SELECT msp_id, ca_pem FROM msp")
                }
                witnessed = [
                    check_head(
                        head,
                        channel=self.channel,
                        height=report["height"],
                        block_hash=self._stored_hash,
                        orderer=report["orderer"],
                        organizations=orgs,
                    )
                    for head in against
                ]
            finally:
                self._conn.execute("ROLLBACK")
        return {**report, "witnesses": witnessed}

    def _stored_hash(self, number: int) -> bytes | None:
        row = self._conn.execute("SELECT hash FROM blocks WHERE number = ?", (number,)).fetchone()
        return None if row is None else bytes(row[0])
