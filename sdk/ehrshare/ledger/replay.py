"""The embedded ledger's full check: signatures, hashes, and a replay of every transaction.

:func:`replay_ledger` walks the block log from genesis. Each block must link to the one before,
match its hash and carry the ordering key's signature; the genesis block must bind the channel
and the ordering certificate; a config block must hold the organisation CA the ``msp`` table
names. Every transaction's proposal must carry its client's valid signature by a certificate
its organisation's CA (as admitted by the config blocks *before* it) issued; every valid one is
run again through the same chaincode on a scratch in-memory state, and its write set, response
and event must be the stored ones. Finally the stored key history and world state must be what
the replay produced. The first difference is raised as
:class:`~ehrshare.ledger.errors.LedgerIntegrityError` naming the block (and transaction).

Invalid transactions (``MVCC_READ_CONFLICT``, ``PHANTOM_READ_CONFLICT``) are checked for their
signature only: their read set was against a state the replay does not rebuild. This module
must not write to the ledger it checks.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ehrshare.ledger.envelope import SignedProposal
from ehrshare.ledger.errors import LedgerIntegrityError
from ehrshare.ledger.ordering import OrderingIdentity, genesis_data_hash
from ehrshare.ledger.records import (
    _SCHEMA,
    DUPLICATE_TXID,
    GENESIS_PREV,
    MVCC_READ_CONFLICT,
    PHANTOM_READ_CONFLICT,
    VALID,
    _block_hash,
    _tx_hash,
    show_key,
)
from ehrshare.ledger.simulation import ProposalRejected
from ehrshare.ledger.store import EmbeddedLedger
from ehrshare_chaincode.stub import ChaincodeFunction

__all__ = ["replay_ledger"]


def _fail(message: str, block: int | None = None, txn: int | None = None) -> NoReturn:
    raise LedgerIntegrityError(message, block=block, txn=txn)


def _scratch(channel: str, chaincodes: Mapping[str, ChaincodeFunction]) -> EmbeddedLedger:
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.executescript(_SCHEMA)
    scratch = EmbeddedLedger(Path(":memory:"), conn, channel)
    scratch.max_clock_skew_s = None  # old proposals are old
    scratch.check_reads = False
    scratch._chaincodes = dict(chaincodes)
    return scratch


def replay_ledger(
    conn: sqlite3.Connection, channel: str, chaincodes: Mapping[str, ChaincodeFunction]
) -> dict[str, Any]:
    """Check the ledger in ``conn`` (inside a read transaction the caller holds) completely.

    Returns counts, the height and the head hash; raises ``LedgerIntegrityError``.
    """
    meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
    if "orderer_cert" not in meta or "orderer_ca" not in meta:
        _fail("the ledger has no ordering certificate", 0)
    ordering = OrderingIdentity(
        str(meta["orderer_ca"]).encode(), str(meta["orderer_cert"]).encode()
    )
    problem = ordering.problem()
    if problem is not None:
        _fail(f"block 0: {problem}", 0)
    sigs = {int(n): bytes(s) for n, s in conn.execute("SELECT number, signature FROM block_sigs")}
    msps = {
        str(r[0]): (bytes(r[1]), int(r[2]))
        for r in conn.execute("SELECT msp_id, ca_pem, added_block FROM msp")
    }
    config_msp = {added: (msp, ca) for msp, (ca, added) in msps.items()}
    scratch = _scratch(channel, chaincodes)
    try:
        seen: set[str] = set()
        prev = GENESIS_PREV
        txs = 0
        blocks = conn.execute(
            "SELECT number, prev_hash, data_hash, hash, tx_count, kind FROM blocks ORDER BY number"
        ).fetchall()
        if not blocks:
            _fail("the ledger has no genesis block", 0)
        for expected, (number, prev_hash, data_hash, block_hash, tx_count, kind) in enumerate(
            blocks
        ):
            data_hash, block_hash = bytes(data_hash), bytes(block_hash)
            if number != expected:
                _fail(f"block {expected} is missing", expected)
            if bytes(prev_hash) != prev:
                _fail(f"block {number} does not link to block {number - 1}", number)
            if _block_hash(number, prev, data_hash) != block_hash:
                _fail(f"block {number} does not match its hash", number)
            signature = sigs.get(number)
            if signature is None:
                _fail(f"block {number} has no orderer signature", number)
            if not ordering.verify_block(channel, number, block_hash, signature):
                _fail(f"block {number}: the orderer's signature does not verify", number)
            if number == 0:
                if kind != "genesis" or data_hash != genesis_data_hash(channel, ordering):
                    _fail(
                        "block 0 (genesis) does not match the channel and the ordering certificate",
                        0,
                    )
            elif kind == "config":
                _replay_config(scratch, config_msp, number, data_hash)
            elif kind == "tx":
                _replay_block(conn, scratch, seen, number, data_hash, int(tx_count))
                txs += int(tx_count)
            else:
                _fail(f"block {number} is of unknown kind {kind!r}", number)
            prev = block_hash
        height = len(blocks)
        extra = conn.execute(
            "SELECT MIN(blk) FROM transactions WHERE blk >= ?", (height,)
        ).fetchone()[0]
        if extra is not None:
            _fail(f"transactions of block {extra} remain but the block does not", int(extra))
        for msp, (_, added) in sorted(msps.items()):
            if added not in config_msp or config_msp[added][0] != msp or added >= height:
                _fail(f"organisation {msp} was admitted by no config block", added)
        _compare_history(conn, scratch._conn)
        keys = _compare_state(conn, scratch._conn)
    finally:
        scratch._conn.close()
    return {
        "blocks": height,
        "transactions": txs,
        "keys": keys,
        "height": height,
        "head": prev.hex(),
        "orderer": ordering.fingerprint,
    }


def _replay_config(
    scratch: EmbeddedLedger,
    config_msp: Mapping[int, tuple[str, bytes]],
    number: int,
    data_hash: bytes,
) -> None:
    if number not in config_msp:
        _fail(f"config block {number} admits no organisation in the msp table", number)
    msp, ca = config_msp[number]
    if hashlib.sha256(b"config:" + msp.encode() + b"\x00" + ca).digest() != data_hash:
        _fail(
            f"config block {number}: the ca certificate of {msp} is not the one the block admitted",
            number,
        )
    scratch._conn.execute("INSERT INTO msp VALUES (?, ?, ?)", (msp, ca, number))


def _replay_block(
    conn: sqlite3.Connection,
    scratch: EmbeddedLedger,
    seen: set[str],
    number: int,
    data_hash: bytes,
    tx_count: int,
) -> None:
    rows = conn.execute(
        "SELECT tx_id, txn, code, chaincode, function, proposal, signature, writes, response, "
        "event_name, event_payload, tx_hash FROM transactions WHERE blk = ? ORDER BY txn",
        (number,),
    ).fetchall()
    if [int(r[1]) for r in rows] != list(range(tx_count)):
        _fail(f"block {number} has lost transactions", number)
    data = hashlib.sha256()
    for r in rows:
        event = None if r[9] is None else (str(r[9]), bytes(r[10]))
        signed = SignedProposal(bytes(r[5]), bytes(r[6]))
        h = _tx_hash(signed, bytes(r[7]), bytes(r[8]), event, str(r[2]))
        if h != bytes(r[11]):
            _fail(f"block {number} transaction {r[1]} does not match its hash", number, int(r[1]))
        data.update(h)
    if data.digest() != data_hash:
        _fail(f"block {number} data does not match its hash", number)
    for r in rows:
        _replay_tx(scratch, seen, number, r)


def _replay_tx(scratch: EmbeddedLedger, seen: set[str], number: int, r: Sequence[Any]) -> None:
    txn, code = int(r[1]), str(r[2])
    where = f"block {number} transaction {txn}"
    signed = SignedProposal(bytes(r[5]), bytes(r[6]))
    try:
        if code == VALID:
            tx = scratch._simulate(signed, check=False)
            proposal = tx.proposal
        else:
            proposal, _ = scratch._check_proposal(signed)
    except ProposalRejected as exc:
        if exc.chaincode_error:
            _fail(f"{where}: the chaincode refuses it on replay: {exc.message}", number, txn)
        _fail(f"{where}: {exc.message}", number, txn)
    tx_id = proposal.tx_id if code != DUPLICATE_TXID else f"{proposal.tx_id}#{number}.{txn}"
    if (str(r[0]), str(r[3]), str(r[4])) != (tx_id, proposal.chaincode, proposal.function):
        _fail(f"{where}: its id, chaincode or function differs from its proposal", number, txn)
    if code == VALID:
        if proposal.tx_id in seen:
            _fail(f"{where} repeats transaction {proposal.tx_id} of an earlier block", number, txn)
        event = None if r[9] is None else (str(r[9]), bytes(r[10]))
        if tx.writes_json() != bytes(r[7]):
            _fail(f"{where}: its write set differs from the replay", number, txn)
        if tx.result != bytes(r[8]):
            _fail(f"{where}: its response differs from the replay", number, txn)
        if tx.event != event:
            _fail(f"{where}: its chaincode event differs from the replay", number, txn)
        scratch._apply(tx, number, txn)
    elif code == DUPLICATE_TXID:
        if proposal.tx_id not in seen:
            _fail(
                f"{where} is marked duplicate, but no earlier transaction has its id", number, txn
            )
    elif code not in (MVCC_READ_CONFLICT, PHANTOM_READ_CONFLICT):
        _fail(f"{where} has unknown validation code {code!r}", number, txn)
    seen.add(proposal.tx_id)


_HISTORY = (
    "SELECT blk, txn, ns, key, tx_id, ts_s, ts_ns, value, is_delete FROM history "
    "ORDER BY blk, txn, ns, key"
)


def _norm(row: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(bytes(v) if isinstance(v, bytes | memoryview) else v for v in row)


def _compare_history(stored: sqlite3.Connection, replayed: sqlite3.Connection) -> None:
    a = [_norm(r) for r in stored.execute(_HISTORY)]
    b = [_norm(r) for r in replayed.execute(_HISTORY)]
    for x, y in zip(a, b, strict=False):
        if x != y:
            first = min((x, y), key=lambda r: (r[0], r[1]))
            _fail(
                f"the key history of {show_key(first[3])} at block {first[0]} transaction "
                f"{first[1]} differs from the replay",
                int(first[0]),
                int(first[1]),
            )
    if len(a) != len(b):
        row = (a if len(a) > len(b) else b)[min(len(a), len(b))]
        what = "has a row the replay does not" if len(a) > len(b) else "lacks a row of the replay"
        _fail(
            f"the key history of {show_key(row[3])} {what} (block {row[0]} transaction {row[1]})",
            int(row[0]),
            int(row[1]),
        )


_STATE = "SELECT ns, key, value, blk, txn FROM state ORDER BY ns, key"


def _compare_state(stored: sqlite3.Connection, replayed: sqlite3.Connection) -> int:
    a = {(r[0], bytes(r[1])): (bytes(r[2]), int(r[3]), int(r[4])) for r in stored.execute(_STATE)}
    b = {(r[0], bytes(r[1])): (bytes(r[2]), int(r[3]), int(r[4])) for r in replayed.execute(_STATE)}
    if a == b:
        return len(a)
    bad = []
    for k in sorted(a.keys() | b.keys()):
        if a.get(k) != b.get(k):
            last = b.get(k) or a.get(k)
            assert last is not None
            bad.append((last[1], last[2], k))
    blk, txn, (_, key) = min(bad)
    _fail(
        f"world state does not match the key history replayed from the blocks: key "
        f"{show_key(key)} (last written in block {blk} transaction {txn}; {len(bad)} key(s) "
        "differ)",
        blk,
        txn,
    )
