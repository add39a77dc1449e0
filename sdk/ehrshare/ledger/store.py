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

Around this state API: :mod:`ehrshare.ledger.records` (the stored format and its hashes),
:mod:`ehrshare.ledger.simulation` (a proposal's checks and simulation) and
:mod:`ehrshare.ledger.integrity` (the checked reads).

What this module must not do: interpret chaincode data (it stores bytes), or let a chaincode write
reach the database without going through :meth:`EmbeddedLedger.commit`.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from ehrshare.closing import Closing
from ehrshare.faults import fault_point
from ehrshare.identity import Identity, Signer
from ehrshare.ledger.api import ChaincodeEvent
from ehrshare.ledger.envelope import Proposal, SignedProposal, open_proposal
from ehrshare.ledger.errors import LedgerCorrupt, OrderingKeyError
from ehrshare.ledger.integrity import SignedReads
from ehrshare.ledger.ordering import (
    OrderingIdentity,
    block_message,
    genesis_data_hash,
    load_ordering_key,
    new_ordering_identity,
    write_ordering_key,
)
from ehrshare.ledger.records import (
    _DB_NAME,
    _SCHEMA,
    _SCHEMA_VERSION,
    DUPLICATE_TXID,
    GENESIS_PREV,
    MVCC_READ_CONFLICT,
    PHANTOM_READ_CONFLICT,
    VALID,
    EndorsedTransaction,
    TxStatus,
    _block_hash,
    _tx_hash,
    is_corrupt_database,
)
from ehrshare.ledger.simulation import ProposalRejected, _chains_to, _SimulationStub
from ehrshare_chaincode import contract as ehr_contract
from ehrshare_chaincode.stub import ChaincodeError, ChaincodeFunction

__all__ = ["DEFAULT_MAX_CLOCK_SKEW_S", "EmbeddedLedger"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_CLOCK_SKEW_S = 300


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
        self._reads = SignedReads(conn, channel, lambda: self.ordering)

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
            self._reads.check_read if check and self.check_reads else None,
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
            self._reads.remember(*written)
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
