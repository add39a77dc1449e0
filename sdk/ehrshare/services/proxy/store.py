"""The proxy's database: its schema, the names re-keys are sealed under at rest, and the
per-approval locks. Storage only: what may be stored is decided in
:mod:`ehrshare.services.proxy.service`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from typing import Final

__all__ = [
    "DB_NAME",
    "SCHEMA",
    "KeyedLocks",
    "doomed_rekeys",
    "pending_purpose",
    "read_checkpoint",
    "rekey_purpose",
    "write_checkpoint",
]

DB_NAME: Final = "proxy.db"
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS rekeys (
    grant_id TEXT PRIMARY KEY,
    parent_grant_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    grantor TEXT NOT NULL,
    grantee TEXT NOT NULL,
    type TEXT NOT NULL,
    sealed BLOB NOT NULL,
    stored_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rekeys_parent ON rekeys (parent_grant_id);
CREATE TABLE IF NOT EXISTS rekey_ancestors (
    grant_id TEXT NOT NULL,
    ancestor_id TEXT NOT NULL,
    PRIMARY KEY (grant_id, ancestor_id)
);
CREATE INDEX IF NOT EXISTS rekey_ancestors_ancestor ON rekey_ancestors (ancestor_id);
CREATE INDEX IF NOT EXISTS rekeys_grantee ON rekeys (grantee);
CREATE TABLE IF NOT EXISTS consumed (
    approval_id TEXT PRIMARY KEY,
    record_id TEXT NOT NULL,
    requester TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    consumed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending_rekeys (
    grant_id TEXT NOT NULL,
    depositor TEXT NOT NULL,
    sealed BLOB NOT NULL,
    stored_at REAL NOT NULL,
    PRIMARY KEY (grant_id, depositor)
);
CREATE INDEX IF NOT EXISTS pending_rekeys_stored ON pending_rekeys (stored_at);
"""


class KeyedLocks:
    """One lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)


def rekey_purpose(grant_id: str) -> str:
    return f"proxy/rekey/{grant_id}"


def pending_purpose(grant_id: str, depositor: str) -> str:
    return f"proxy/pending-rekey/{grant_id}/{depositor}"


def read_checkpoint(db: sqlite3.Connection) -> tuple[int | None, str | None]:
    """(block, transaction id) of the last chaincode event handled, from ``meta``."""
    rows = dict(db.execute("SELECT name, value FROM meta").fetchall())
    block = rows.get("events.block")
    return (None if block is None else int(block)), rows.get("events.tx")


def write_checkpoint(db: sqlite3.Connection, block: int, tx_id: str) -> None:
    """Record the last chaincode event handled, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT OR REPLACE INTO meta VALUES ('events.block', ?)", (str(block),))
    db.execute("INSERT OR REPLACE INTO meta VALUES ('events.tx', ?)", (tx_id,))
    db.execute("COMMIT")


def doomed_rekeys(db: sqlite3.Connection, grant_id: str) -> list[str]:
    """The re-key ids revoking ``grant_id`` deletes: its own, those of its type-key epochs and
    of grants forwarded from it (the ancestors table, for parents whose re-keys sit at another
    proxy), and descendants whose parents were stored here (the parent_grant_id walk)."""
    doomed = [grant_id]
    doomed += [
        str(r[0])
        for r in db.execute(
            "SELECT grant_id FROM rekey_ancestors WHERE ancestor_id = ? ORDER BY grant_id",
            (grant_id,),
        ).fetchall()
    ]
    frontier = list(doomed)
    while frontier:
        rows = db.execute(
            f"SELECT grant_id FROM rekeys WHERE parent_grant_id IN "  # noqa: S608
            f"({','.join('?' * len(frontier))})",
            frontier,
        ).fetchall()
        frontier = [str(r[0]) for r in rows if str(r[0]) not in doomed]
        doomed.extend(frontier)
    return doomed
