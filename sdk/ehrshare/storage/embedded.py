"""The embedded content-addressed store: one file per blob in a directory, keyed by CID.

The default backend (no daemon). It issues the very CIDs a Kubo node would for the same bytes
(see :mod:`ehrshare.storage.unixfs`), so pointers written on the ledger keep working when a
deployment switches to IPFS. Writes are atomic: bytes go to a temporary file in the same
directory tree, are fsynced, then renamed into place; a failure removes the temporary file. Every
read recomputes the CID, so a blob altered on disk is reported, never returned.

A writer killed mid-write (SIGKILL, power loss) cannot remove its ``tmp/*.part`` file, and
several processes share one store, so "delete every .part at start-up" would delete a live
writer's file. Instead a writer holds an exclusive ``flock`` on its .part file from creation to
rename, and opening the store removes only the .part files it can lock — those whose writer is
gone (the kernel drops a dead process's locks).

A consortium's store also holds a marker file, ``ehrshare-store.json``, naming the consortium
(:mod:`ehrshare.volumes` writes it at ``consortium init`` and checks it before every open); a
consortium opens its store with ``create=False``, so an unmounted or empty volume is never
silently re-created. :meth:`EmbeddedStore.blobs` lists what is held, for ``ehrshare store
check`` and ``store gc``.

It is a local store for one process tree: it does not replicate or lock across
machines, and it keeps whole files (not IPFS blocks), so it cannot serve the IPFS network.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .cid import CID, DAG_PB
from .errors import ContentNotFound, IntegrityError, StorageError
from .unixfs import CHUNK_SIZE, BlobSource, FileDagBuilder, iter_source

__all__ = ["STORE_MARKER", "EmbeddedStore", "StoredBlob"]

STORE_MARKER = "ehrshare-store.json"

_log = logging.getLogger(__name__)


def _canonical(cid: str) -> CID:
    """Parse ``cid`` and express it as CIDv1 (a v0 ``Qm…`` names the same dag-pb root)."""
    parsed = CID.parse(cid)
    if parsed.version == 0:
        return CID(1, DAG_PB, parsed.multihash)
    return parsed


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """One blob file of the store: its CID (as the file is named), size and mtime (seconds)."""

    cid: str
    size: int
    mtime: float


class EmbeddedStore:
    """A :class:`~ehrshare.storage.base.BlobStore` in a local directory.

    Use it for the embedded backend, tests and single-machine demos. Content is kept until
    :meth:`unpin` deletes it; there is no separate pin set.
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"
        if not create:
            # An existing store only: nothing is made (an unmounted volume stays visible).
            missing = [p.name for p in (self._blobs, self._tmp) if not p.is_dir()]
            if missing:
                raise StorageError(
                    f"the embedded store {self.root} lacks {' and '.join(missing)}/; "
                    "it is not a store 'consortium init' made"
                )
        try:
            if create:
                self._blobs.mkdir(parents=True, exist_ok=True)
                self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the embedded store in {self.root}: {exc}") from exc
        self._sweep_abandoned()

    def _sweep_abandoned(self) -> int:
        """Remove the .part files of dead writers (those nobody holds a lock on); their count."""
        removed = 0
        try:
            names = sorted(p.name for p in self._tmp.iterdir() if p.name.endswith(".part"))
        except OSError as exc:
            _log.warning("cannot list %s: %s", self._tmp, exc)
            return 0
        for name in names:
            path = self._tmp / name
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # renamed into place or removed meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live writer holds it
                # Remove only the file we locked: the name may have been reused since.
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_ino == os.fstat(fd).st_ino:
                        path.unlink()
                        removed += 1
            finally:
                os.close(fd)  # also releases the lock
        if removed:
            _log.info("removed %d abandoned partial write(s) from %s", removed, self._tmp)
        return removed

    def _locked_part_file(self) -> tuple[int, Path]:
        """A new .part file, open and exclusively locked, that no sweeper removed under us."""
        while True:
            fd, name = tempfile.mkstemp(dir=self._tmp, prefix="put-", suffix=".part")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # A sweeper may have locked and removed the file between mkstemp and flock
                # (it was not locked yet); then start again with a fresh one.
                if os.stat(name).st_ino == os.fstat(fd).st_ino:
                    return fd, Path(name)
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(name)
                raise
            os.close(fd)

    def __repr__(self) -> str:
        return f"EmbeddedStore({str(self.root)!r})"

    def _path(self, cid: CID) -> Path:
        text = str(cid)
        # Shard by two characters near the end (as Kubo's flatfs does): the start of a base32
        # CIDv1 is the same for every blob of one codec, the end is uniformly distributed.
        return self._blobs / text[-3:-1] / text

    def put(self, data: BlobSource) -> str:
        """Store ``data`` and return its CID (idempotent: storing the same bytes again is cheap)."""
        builder = FileDagBuilder()
        try:
            fd, tmp = self._locked_part_file()
        except OSError as exc:
            raise StorageError(f"cannot write to the embedded store in {self.root}: {exc}") from exc
        try:
            # The file stays open, hence locked, until it is renamed into place: closing it
            # first would let another process's sweep remove a finished write.
            with os.fdopen(fd, "wb") as out:
                for piece in iter_source(data):
                    builder.write(piece)
                    out.write(piece)
                out.flush()
                os.fsync(out.fileno())
                cid = builder.finish()
                final = self._path(cid)
                final.parent.mkdir(exist_ok=True)
                os.replace(tmp, final)
            self._fsync_dir(final.parent)
        except OSError as exc:
            raise StorageError(f"cannot write to the embedded store in {self.root}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _log.debug("stored %s (%d bytes)", cid, builder.size)
        return str(cid)

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        # Makes the rename itself durable; some filesystems refuse fsync on a directory.
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def blobs(self) -> Iterator[StoredBlob]:
        """Every blob file held, in name order (files whose name is not a CID are skipped)."""
        for shard in sorted(self._blobs.iterdir()):
            if not shard.is_dir():
                continue
            for path in sorted(shard.iterdir()):
                try:
                    CID.parse(path.name)
                    st = path.stat()
                except (ValueError, OSError):
                    continue
                yield StoredBlob(path.name, st.st_size, st.st_mtime)

    def _open(self, cid: str) -> tuple[CID, Path]:
        parsed = _canonical(cid)
        path = self._path(parsed)
        if not path.is_file():
            raise ContentNotFound(str(parsed), f"not in the embedded store at {self.root}")
        return parsed, path

    def iter(self, cid: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Stream the content of ``cid``.

        The CID is checked as the bytes go by; on a mismatch :class:`IntegrityError` is raised
        before the last piece is yielded, so treat pieces as unverified until the loop ends.
        """
        parsed, path = self._open(cid)
        return self._iter(parsed, path, chunk_size)

    def _iter(self, parsed: CID, path: Path, chunk_size: int) -> Iterator[bytes]:
        builder = FileDagBuilder()
        with path.open("rb") as blob:
            held = blob.read(chunk_size)
            while True:
                nxt = blob.read(chunk_size)
                if not nxt:
                    break
                builder.write(held)
                yield held
                held = nxt
            builder.write(held)
        actual = builder.finish()
        if actual != parsed:
            raise IntegrityError(str(parsed), f"stored bytes hash to {actual}")
        if held:
            yield held

    def get(self, cid: str) -> bytes:
        """Return the content of ``cid`` after checking it hashes to ``cid``."""
        parsed, path = self._open(cid)
        data = path.read_bytes()
        builder = FileDagBuilder()
        builder.write(data)
        actual = builder.finish()
        if actual != parsed:
            raise IntegrityError(str(parsed), f"stored bytes hash to {actual}")
        return data

    def has(self, cid: str) -> bool:
        """Whether ``cid`` is stored here (existence only; reads do the integrity check)."""
        return self._path(_canonical(cid)).is_file()

    def pin(self, cid: str) -> None:
        """Check ``cid`` is held: everything in the embedded store is kept until unpinned."""
        self._open(cid)

    def unpin(self, cid: str) -> None:
        """Delete ``cid`` from the store; raises :class:`ContentNotFound` if it is not held."""
        parsed, path = self._open(cid)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ContentNotFound(str(parsed), "deleted concurrently") from None

    delete = unpin
