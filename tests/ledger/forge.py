"""Hand edits of an embedded ledger's SQLite file: :mod:`ehrshare.ledger.forge` (the demo's tamper
step uses the same edits)."""

from ehrshare.ledger.forge import (
    flip_decision,
    last_write,
    open_db,
    rehash,
    set_history,
    set_state,
    set_written,
    truncate,
)

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
