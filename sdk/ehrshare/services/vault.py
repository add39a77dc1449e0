"""Secrets at rest for the KGC node and the re-encryption proxy: sealed files and key files.

Both services keep secrets in a state directory (a KGC node its DKG share, a proxy its re-keys).
They are *sealed to the service's own long-term X25519 key* (:func:`ehrshare.hazmat.kgc_keys.seal`:
ephemeral X25519 + HKDF-SHA256 + AES-256-GCM, associated data naming the purpose and the object).
The long-term key itself is loaded at start-up from a key file the operator keeps **outside** the
state directory (a secrets mount, an HSM-backed file, a different disk): a copy of the state
directory alone — a backup, a stolen disk image — opens nothing. We chose this over a passphrase
because the services restart unattended (no one types a passphrase at 3 a.m.), and over a second
symmetric key because the node key already exists, is already protected, and sealing needs no
nonce bookkeeping (a fresh ephemeral key per write).

What this module must not do: write a secret anywhere but through :func:`seal`, log or raise with
secret bytes, or leave a half-written file (writes go to a temporary file that is fsynced and then
renamed over the target).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Final

from ehrshare.hazmat.kgc_keys import X25519KeyPair, open_sealed, seal

__all__ = [
    "atomic_write",
    "check_key_file_outside",
    "open_sealed_file",
    "open_state",
    "read_key_file",
    "seal_state",
    "write_key_file",
    "write_sealed_file",
]

_AAD_PREFIX: Final = b"ehrshare/v1/state/"


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _aad(purpose: str) -> bytes:
    return _AAD_PREFIX + purpose.encode("utf-8")


def write_sealed_file(path: Path, key: X25519KeyPair, purpose: str, secret: bytes) -> None:
    """Seal ``secret`` to ``key`` (bound to ``purpose``) and write it atomically, mode 0600."""
    atomic_write(path, seal(key.public_bytes, secret, aad=_aad(purpose)))


def open_sealed_file(path: Path, key: X25519KeyPair, purpose: str) -> bytes:
    """Read a file written by :func:`write_sealed_file`; any tampering is a ``DecryptionError``."""
    return open_sealed(key, path.read_bytes(), aad=_aad(purpose))


def check_key_file_outside(key_file: Path, state_dir: Path) -> None:
    """Refuse a key file inside the state directory: it would sit next to what it protects."""
    key_path = key_file.resolve()
    state = state_dir.resolve()
    if key_path == state or state in key_path.parents:
        raise ValueError(
            f"key file {key_file} is inside the state directory {state_dir}; keep it elsewhere "
            "so that a copy of the state directory opens nothing"
        )


def write_key_file(path: Path, secret: bytes) -> None:
    """Write a new key file (mode 0600); refuses to overwrite an existing one."""
    if path.exists():
        raise FileExistsError(f"key file {path} already exists; refusing to overwrite it")
    atomic_write(path, secret, mode=0o600)


def read_key_file(path: Path) -> bytes:
    """Read a key file, refusing one that other users can read."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"key file {path} does not exist") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(
            f"key file {path} is readable by group or others (mode {info.st_mode & 0o777:o}); "
            "chmod 600 it"
        )
    return path.read_bytes()


def seal_state(key: X25519KeyPair, purpose: str, secret: bytes) -> bytes:
    """Seal a secret for storage in a database row (same construction as the sealed files)."""
    return seal(key.public_bytes, secret, aad=_aad(purpose))


def open_state(key: X25519KeyPair, purpose: str, blob: bytes) -> bytes:
    """Open what :func:`seal_state` produced; tampering or a wrong key is a ``DecryptionError``."""
    return open_sealed(key, blob, aad=_aad(purpose))
