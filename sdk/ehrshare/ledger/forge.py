"""Hand edits of an embedded ledger's SQLite file, as a rogue database administrator makes them:
for the demo's tamper step and the tamper tests, which show that ``EmbeddedLedger.verify``
catches each. Not for anything else.

Every edit here is *consistent* as far as plain SHA-256 goes: values changed in the world state,
the key history and the transaction's stored write set alike, transaction and block hashes and
the chain links recomputed (:func:`flip_decision`: an access decision turned round and the
patient's audit hash chain recomputed after it). ``rehash(ledger_dir=...)`` additionally
re-signs every block with the ordering key read from the ledger directory (the attacker who
holds the embedded ledger's host). This module must not be used on a ledger anyone relies on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from ehrshare.identity import Signer
from ehrshare.ledger.envelope import SignedProposal
from ehrshare.ledger.records import _block_hash, _tx_hash

__all__ = [
    "flip_decision",
    "last_write",
    "open_db",
    "rehash",
    "set_history",
    "set_state",
    "set_written",
    "truncate",
]


def open_db(ledger_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(ledger_dir / "ledger.sqlite", isolation_level=None)


def last_write(db: sqlite3.Connection, key: bytes) -> tuple[int, int]:
    blk, txn = db.execute("SELECT blk, txn FROM state WHERE key = ?", (key,)).fetchone()
    return int(blk), int(txn)


def set_state(db: sqlite3.Connection, key: bytes, value: bytes) -> None:
    """L1: the world state row only."""
    db.execute("UPDATE state SET value = ? WHERE key = ?", (value, key))


def set_history(db: sqlite3.Connection, key: bytes, value: bytes) -> None:
    """The key's last history row (L2 with :func:`set_state`)."""
    blk, txn = last_write(db, key)
    db.execute(
        "UPDATE history SET value = ? WHERE key = ? AND blk = ? AND txn = ?", (value, key, blk, txn)
    )


def set_written(db: sqlite3.Connection, key: bytes, value: bytes) -> int:
    """State, last history row and the stored write set of the transaction that wrote it;
    returns that transaction's block (call :func:`rehash` from there)."""
    set_state(db, key, value)
    set_history(db, key, value)
    blk, txn = last_write(db, key)
    (raw,) = db.execute(
        "SELECT writes FROM transactions WHERE blk = ? AND txn = ?", (blk, txn)
    ).fetchone()
    rows = json.loads(raw)
    for row in rows:
        if base64.b64decode(row[1]) == key:
            row[2] = base64.b64encode(value).decode()
    new = json.dumps(rows, separators=(",", ":")).encode()
    db.execute("UPDATE transactions SET writes = ? WHERE blk = ? AND txn = ?", (new, blk, txn))
    return blk


def rehash(
    db: sqlite3.Connection, start: int, *, ledger_dir: Path | None = None, channel: str = ""
) -> None:
    """Recompute transaction hashes, block data hashes, links and block hashes from ``start``;
    with ``ledger_dir``, also re-sign those blocks with the ledger's ordering key."""
    signer = None
    if ledger_dir is not None:
        from ehrshare.ledger.ordering import KEY_FILE  # not in the code before signed blocks

        signer = Signer.from_secret_bytes((ledger_dir / KEY_FILE).read_bytes())
    (prev,) = db.execute("SELECT hash FROM blocks WHERE number = ?", (start - 1,)).fetchone()
    prev = bytes(prev)
    for number, data_hash, kind in db.execute(
        "SELECT number, data_hash, kind FROM blocks WHERE number >= ? ORDER BY number", (start,)
    ).fetchall():
        data_hash = bytes(data_hash)
        if kind == "tx":
            data = hashlib.sha256()
            for txn, proposal, sig, writes, response, ev_name, ev_payload, code in db.execute(
                "SELECT txn, proposal, signature, writes, response, event_name, event_payload, "
                "code FROM transactions WHERE blk = ? ORDER BY txn",
                (number,),
            ).fetchall():
                event = None if ev_name is None else (ev_name, bytes(ev_payload))
                h = _tx_hash(
                    SignedProposal(bytes(proposal), bytes(sig)),
                    bytes(writes),
                    bytes(response),
                    event,
                    code,
                )
                db.execute(
                    "UPDATE transactions SET tx_hash = ? WHERE blk = ? AND txn = ?",
                    (h, number, txn),
                )
                data.update(h)
            data_hash = data.digest()
        block_hash = _block_hash(number, prev, data_hash)
        db.execute(
            "UPDATE blocks SET prev_hash = ?, data_hash = ?, hash = ? WHERE number = ?",
            (prev, data_hash, block_hash, number),
        )
        if signer is not None:
            from ehrshare.ledger.ordering import block_message

            db.execute(
                "UPDATE block_sigs SET signature = ? WHERE number = ?",
                (signer.sign(block_message(channel, number, block_hash)), number),
            )
        prev = block_hash


def truncate(db: sqlite3.Connection, keep: int) -> None:
    """L4: delete every block from ``keep`` on, with its transactions and history, and put the
    world state back to what it was before them."""
    touched = db.execute("SELECT DISTINCT ns, key FROM history WHERE blk >= ?", (keep,)).fetchall()
    db.execute("DELETE FROM history WHERE blk >= ?", (keep,))
    for ns, key in touched:
        last = db.execute(
            "SELECT value, is_delete, blk, txn FROM history WHERE ns = ? AND key = ? "
            "ORDER BY blk DESC, txn DESC LIMIT 1",
            (ns, key),
        ).fetchone()
        if last is None or last[1]:
            db.execute("DELETE FROM state WHERE ns = ? AND key = ?", (ns, key))
        else:
            db.execute(
                "INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?, ?)",
                (ns, key, last[0], last[2], last[3]),
            )
    db.execute("DELETE FROM transactions WHERE blk >= ?", (keep,))
    db.execute("DELETE FROM blocks WHERE number >= ?", (keep,))
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'block_sigs'").fetchone():
        db.execute("DELETE FROM block_sigs WHERE number >= ?", (keep,))


def _log_key(chain: str, seq: int) -> bytes:
    from ehrshare_chaincode.stub import create_composite_key

    return create_composite_key("ehr.log", [chain, f"{seq:012d}"]).encode()


def _value(db: sqlite3.Connection, key: bytes) -> Any:
    (raw,) = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    return json.loads(raw)


def flip_decision(db: sqlite3.Connection, chain: str, requester: str) -> tuple[int, int]:
    """L3c: ``requester``'s first denied access decision in ``chain`` (a patient's log) turned
    into "allow", every later entry of the chain and its head re-hashed, each in state, history
    and the write set that wrote it. Returns (the forged entry's seq, the first block to
    :func:`rehash` from)."""
    from ehrshare_chaincode import canonical
    from ehrshare_chaincode.auditlog import entry_hash
    from ehrshare_chaincode.stub import create_composite_key

    head_key = create_composite_key("ehr.loghead", [chain]).encode()
    head = _value(db, head_key)
    entries = [_value(db, _log_key(chain, s)) for s in range(1, int(head["seq"]) + 1)]
    seq = next(
        (
            int(e["seq"])
            for e in entries
            if e["action"] == "AccessDecision"
            and e["outcome"] == "deny"
            and e["detail"].get("requester") == requester
        ),
        None,
    )
    if seq is None:
        raise LookupError(f"{chain} has no denied access decision of {requester}")
    changed: dict[bytes, bytes] = {}
    prev = entries[seq - 2]["hash"] if seq > 1 else entries[0]["prev_hash"]
    for e in entries[seq - 1 :]:
        if e["seq"] == seq:
            e["outcome"] = "allow"
        e["prev_hash"] = prev
        e["hash"] = entry_hash(e)
        prev = e["hash"]
        changed[_log_key(chain, int(e["seq"]))] = canonical.dumps(e)
    head["hash"] = prev
    changed[head_key] = canonical.dumps(head)
    first = min(set_written(db, k, v) for k, v in changed.items())
    return seq, first
