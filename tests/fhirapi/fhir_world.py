"""The world of the FHIR API tests: the server under test, its clients, and a digest of what
the consortium stores (to assert that a refused request changed nothing)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import httpx

from ehrshare.fhirapi import FhirServer
from ehrshare.ledger.sandbox import ManualClock
from ehrshare.provisioning import Consortium


@dataclass
class Fhir:
    """The server under test and a client per member (``anon`` sends no token)."""

    url: str
    consortium: Consortium
    clock: ManualClock
    tokens: dict[str, str]
    ids: dict[str, str]
    server: FhirServer

    def client(self, name: str | None) -> httpx.Client:
        headers = {"Content-Type": "application/fhir+json"}
        if name is not None:
            headers["Authorization"] = f"Bearer {self.tokens[name]}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def state_digest(consortium_dir: Path) -> str:
    """SHA-256 over the ledger database and the content store (names and bytes), so a test can
    assert that a refused request changed nothing. SQLite's shared-memory index is left out:
    readers rewrite it without changing anything stored."""
    h = hashlib.sha256()
    for area in ("ledger", "store"):
        for path in sorted((consortium_dir / area).rglob("*")):
            if not path.is_file() or path.name.endswith("-shm"):
                continue
            h.update(str(path.relative_to(consortium_dir)).encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()
