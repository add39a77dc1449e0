"""The operation log's hash chain: how an entry is hashed and how a chain is verified.

Each chain (one per patient, plus ``~system`` for operations that concern no patient) is a sequence
of entries numbered from 1; every entry holds the previous entry's hash, and the chain's head
records the last sequence number and hash, so a deleted tail is caught as well as an edited entry.
The functions here are pure so that an auditor can verify a downloaded trail offline with the very
code the chaincode runs. No I/O here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from . import canonical

__all__ = ["GENESIS_HASH", "SYSTEM_CHAIN", "entry_hash", "verify_entries"]

GENESIS_HASH = "0" * 64
# IBE identities always contain "/", so this name cannot collide with a patient's chain.
SYSTEM_CHAIN = "~system"


def entry_hash(entry: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the entry without its own ``hash`` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical.dumps(body)).hexdigest()


def verify_entries(
    chain: str, entries: Sequence[Mapping[str, Any]], head: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Recompute a whole chain; the result names the first bad entry and why.

    ``entries`` must be the complete chain in sequence order and ``head`` the stored chain head
    (None for a chain that was never written).
    """
    prev = GENESIS_HASH
    for index, entry in enumerate(entries, start=1):
        problem = None
        if entry.get("chain") != chain:
            problem = f"entry {index} belongs to chain {entry.get('chain')!r}"
        elif entry.get("seq") != index:
            problem = f"entry {index} has sequence number {entry.get('seq')!r}"
        elif entry.get("prev_hash") != prev:
            problem = f"entry {index} does not link to the previous entry"
        elif entry.get("hash") != entry_hash(entry):
            problem = f"entry {index} does not match its hash"
        if problem is not None:
            return {
                "chain": chain,
                "valid": False,
                "length": len(entries),
                "first_bad_seq": index,
                "reason": problem,
            }
        prev = str(entry["hash"])
    expected_len = 0 if head is None else head.get("seq")
    expected_hash = GENESIS_HASH if head is None else head.get("hash")
    if expected_len != len(entries) or expected_hash != prev:
        return {
            "chain": chain,
            "valid": False,
            "length": len(entries),
            "first_bad_seq": min(len(entries), int(expected_len or 0)) + 1,
            "reason": "chain head does not match the last entry",
        }
    return {
        "chain": chain,
        "valid": True,
        "length": len(entries),
        "first_bad_seq": 0,
        "reason": "",
        "head": prev,
    }
