"""A consortium's ledger and store carry its id; opening a missing or foreign one is an error.

The embedded ledger directory and the content store are volumes that can be absent (not
mounted), empty (a bare mount point) or another consortium's. Opening such a volume must never
create a new, empty ledger or store in its place: a record put there would vanish when the real
volume came back. So ``consortium init`` writes the consortium id (the profile's ``id:``) into
both — a ``meta`` row ``consortium`` in the embedded ledger's SQLite, ``ehrshare-store.json`` in
the embedded store's root, ``/ehrshare/consortia/<id>`` in a Kubo node's MFS (one node may serve
several consortia; a node started on a new, empty repository lacks it) — and every open
checks it first (:func:`check_ledger`, :func:`check_store`), raising :class:`VolumeError`
(exit code 3) that names the path and what to do.

This module must not create, repair or migrate a volume: only :func:`mark_store` writes, and
only ``consortium init`` calls it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Final

from ehrshare.ledger.errors import LedgerCorrupt
from ehrshare.ledger.records import is_corrupt_database
from ehrshare.profile import Profile, ProfileError
from ehrshare.storage import KuboClient, StorageError
from ehrshare.storage.embedded import STORE_MARKER

__all__ = [
    "KUBO_MARKER",
    "VolumeError",
    "check_ledger",
    "check_ledger_dir",
    "check_store",
    "ledger_consortium",
    "mark_store",
    "require_ledger",
    "volume_problems",
]

KUBO_MARKER: Final = "/ehrshare/consortia"
_LEDGER_DB: Final = "ledger.sqlite"
_RESTORE = (
    "mount or restore the consortium's volume there (docs/operations.md §9a); nothing was created"
)


class VolumeError(ProfileError):
    """A ledger or store volume is missing, empty or another consortium's (exit code 3)."""


def _profile_id(profile: Profile) -> str:
    if not profile.consortium_id:
        raise VolumeError(
            f"profile {profile.path or ''}: id (the consortium id) is missing; a profile "
            "'ehrshare consortium init' writes has one"
        )
    return profile.consortium_id


def require_ledger(directory: Path) -> Path:
    """The ledger database of ``directory``; :class:`VolumeError` when the directory or the
    database is missing or empty. For a bare ``--ledger`` directory, which names no consortium
    to compare with; read-only."""
    db = directory / _LEDGER_DB
    if not directory.is_dir():
        raise VolumeError(f"ledger {directory} does not exist (an unmounted volume?): {_RESTORE}")
    if not db.is_file() or db.stat().st_size == 0:
        raise VolumeError(f"ledger {directory} is empty (no {_LEDGER_DB}): {_RESTORE}")
    return db


def ledger_consortium(directory: Path) -> str:
    """The consortium id an embedded ledger directory carries; :class:`VolumeError` (naming
    the path) when the directory or its database is missing, empty or carries none. Read-only:
    nothing is created."""
    db = require_ledger(directory)
    try:
        # Without a -wal file every committed page is in the database file, and immutable=1
        # reads it without creating -wal/-shm files next to a volume that may be foreign.
        wal = db.with_name(db.name + "-wal").exists()
        mode = "mode=ro" if wal else "mode=ro&immutable=1"
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?{mode}", uri=True, timeout=30.0)
        try:
            row = conn.execute("SELECT value FROM meta WHERE name = 'consortium'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if is_corrupt_database(exc):
            raise LedgerCorrupt(
                f"the ledger database {db} is damaged ({exc}); nothing was read or changed — "
                "restore the ledger directory from a backup"
            ) from None
        raise VolumeError(f"ledger {db} is not an ehrshare ledger ({exc}): {_RESTORE}") from None
    if row is None:
        raise VolumeError(
            f"ledger {directory} carries no consortium id ('consortium init' did not make it): "
            f"{_RESTORE}"
        )
    return str(row[0])


def check_ledger(profile: Profile) -> None:
    """Refuse an embedded ledger that is missing, empty or another consortium's (Fabric
    ledgers live in the peers: nothing to check here)."""
    if profile.ledger_backend != "embedded":
        return
    check_ledger_dir(profile.ledger_path, _profile_id(profile), "this profile's id")


def check_ledger_dir(directory: Path, want: str, whose: str = "--consortium-id") -> None:
    """Refuse an embedded ledger directory that is missing, empty or does not carry the
    consortium id ``want`` (``whose`` says where that id came from); read-only."""
    found = ledger_consortium(directory)
    if found != want:
        raise VolumeError(
            f"ledger {directory} belongs to consortium {found}, not {want} ({whose}): "
            f"another consortium's volume is mounted there; {_RESTORE}"
        )


def _store_marker(root: Path) -> str:
    marker = root / STORE_MARKER
    if not root.is_dir():
        raise VolumeError(f"store {root} does not exist (an unmounted volume?): {_RESTORE}")
    if not marker.is_file():
        what = "is empty" if not any(root.iterdir()) else f"has no {STORE_MARKER}"
        raise VolumeError(f"store {root} {what}: {_RESTORE}")
    try:
        value = json.loads(marker.read_text(encoding="utf-8"))["consortium"]
        if not isinstance(value, str):
            raise TypeError(value)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VolumeError(f"store marker {marker} is unreadable ({exc}): {_RESTORE}") from None
    return value


def _kubo_has_marker(client: KuboClient, consortium_id: str) -> bool:
    try:
        data = client.files_read(f"{KUBO_MARKER}/{consortium_id}")
    except FileNotFoundError:
        return False
    return data.decode("utf-8", "replace").strip() == consortium_id


def check_store(profile: Profile, client: KuboClient | None = None) -> None:
    """Refuse a store that is missing, empty or another consortium's. For Kubo, ``client``
    reads the marker from the node's MFS (a node that does not answer raises the client's
    :class:`~ehrshare.storage.StorageUnavailable`)."""
    want = _profile_id(profile)
    if profile.storage_backend == "kubo":
        assert client is not None
        if not _kubo_has_marker(client, want):
            raise VolumeError(
                f"the Kubo node at {client.api_url} holds no marker of consortium {want} "
                f"({KUBO_MARKER}/{want}): it runs on a new or another consortium's repository; "
                f"start it on the consortium's IPFS repository; {_RESTORE}"
            )
        return
    assert profile.storage_path is not None
    found = _store_marker(profile.storage_path)
    if found != want:
        raise VolumeError(
            f"store {profile.storage_path} belongs to consortium {found}, not {want} (this "
            f"profile's id): another consortium's volume is mounted there; {_RESTORE}"
        )


def mark_store(profile: Profile, consortium_id: str, client: KuboClient | None = None) -> None:
    """Write the store's marker (``consortium init`` only): the embedded store's
    ``ehrshare-store.json`` and its directories, or the Kubo node's
    ``/ehrshare/consortia/<id>``."""
    if profile.storage_backend == "kubo":
        assert client is not None
        client.files_write(f"{KUBO_MARKER}/{consortium_id}", consortium_id.encode())
        return
    assert profile.storage_path is not None
    root = profile.storage_path
    for sub in ("blobs", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    tmp = root / f".{STORE_MARKER}.tmp"
    tmp.write_text(json.dumps({"consortium": consortium_id}) + "\n", encoding="utf-8")
    tmp.replace(root / STORE_MARKER)


def volume_problems(profile: Profile) -> dict[str, str]:
    """What :func:`check_ledger` and :func:`check_store` would refuse, by volume (``ledger``,
    ``storage``); empty when both are this consortium's. A Kubo node that does not answer is
    left out (``network status`` reports its reachability itself)."""
    out: dict[str, str] = {}
    try:
        check_ledger(profile)
    except VolumeError as exc:
        out["ledger"] = str(exc)
    try:
        if profile.storage_backend == "kubo":
            assert profile.storage_url is not None
            with KuboClient(profile.storage_url, timeout=5) as client:
                check_store(profile, client)
        else:
            check_store(profile)
    except VolumeError as exc:
        out["storage"] = str(exc)
    except StorageError:
        pass
    return out
